"""The console's pages, one module per page; each registers its routes (and nav entry) here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

if TYPE_CHECKING:
    from fhir_smartflow.console.deps import ConsoleDeps


def register_views(app: Flask, deps: ConsoleDeps) -> None:
    """Register every page of the console on ``app``."""

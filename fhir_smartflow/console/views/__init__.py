"""The console's pages, one module per page; each registers its routes (and nav entry) here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from fhir_smartflow.console.views import docs, flows, history, operations, templates_page, versions

if TYPE_CHECKING:
    from fhir_smartflow.console.deps import ConsoleDeps

# In navigation order.
PAGES = (flows, templates_page, history, operations, versions, docs)


def register_views(app: Flask, deps: ConsoleDeps) -> None:
    """Register every page of the console on ``app``."""
    for page in PAGES:
        page.register(app, deps)

"""The navigation of base.html: each page module adds its entry with ``add_nav`` in ``register_views``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

NAV = "console_nav"


@dataclass(frozen=True)
class NavItem:
    label: str
    endpoint: str
    role: str = "viewer"  # shown only to users with this role


def add_nav(app: Flask, label: str, endpoint: str, role: str = "viewer") -> None:
    app.extensions.setdefault(NAV, []).append(NavItem(label, endpoint, role))


def nav_items(app: Flask) -> list[NavItem]:
    items: list[NavItem] = app.extensions.get(NAV, [])
    return items

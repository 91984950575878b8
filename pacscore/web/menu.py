"""Entries that plugins add to the console's menu.

The core layout names no plugin: a plugin's ``register_blueprints`` calls
``add_menu_item(app, "Routing", "router_pages.index", "configure")`` and the
menu shows the entry to the users holding that right.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

EXTENSION = "pacscore_menu"


@dataclass(frozen=True)
class MenuItem:
    label: str
    endpoint: str  # e.g. "router_pages.index"
    right: str  # shown only to users with this right


def add_menu_item(app: Flask, label: str, endpoint: str, right: str) -> None:
    """Add a link to ``endpoint`` labelled ``label`` to the console menu."""
    app.extensions.setdefault(EXTENSION, []).append(MenuItem(label, endpoint, right))


def menu_items(app: Flask) -> list[MenuItem]:
    return list(app.extensions.get(EXTENSION, []))

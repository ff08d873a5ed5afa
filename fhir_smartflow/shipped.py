"""The files shipped inside the package: example flows, mappings, templates, sample resources for
``simulate``, the example configuration and the text of a new site's README.

They are read with ``importlib.resources``, so an installed wheel works from any directory. A config
value names them as ``shipped:<path>`` (``shipped:mappings``, ``shipped:flows/examples``,
``shipped:templates``): the defaults of ``[engine]``. ``fhir-smartflow init`` copies them into a site of
its own to edit.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

PREFIX = "shipped:"

MAPPINGS = "mappings"
FLOWS = "flows/examples"
TEMPLATES = "templates"
SAMPLES = "samples"
EXAMPLE_CONFIG = "config.example.toml"
SITE_README = "site-README.md"


def root() -> Traversable:
    """The package's data directory."""
    return files("fhir_smartflow") / "data"


def ref(name: str) -> str:
    """The config value naming shipped data ``name`` (``shipped:mappings``)."""
    return f"{PREFIX}{name}"


def is_shipped(value: str) -> bool:
    return value.startswith(PREFIX)


def locate(name: str) -> Traversable:
    """Shipped data ``name`` (``flows/examples``, or a ``shipped:`` value); it may not exist."""
    node = root()
    for part in name.removeprefix(PREFIX).strip("/").split("/"):
        if part:
            node = node / part
    return node


def read_text(name: str) -> str:
    return locate(name).read_text(encoding="utf-8")


def walk(node: Traversable, suffix: str = "") -> Iterator[tuple[Path, Traversable]]:
    """Every file under ``node`` whose name ends with ``suffix`` (its path relative to ``node``, the file),
    depth first, sorted by name."""
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            for relative, item in walk(child, suffix):
                yield Path(child.name) / relative, item
        elif child.is_file() and child.name.endswith(suffix):
            yield Path(child.name), child


def copy_tree(name: str, dest: Path, suffix: str = "") -> list[Path]:
    """Copy shipped directory ``name`` into ``dest`` (created), keeping its layout; the files written."""
    written: list[Path] = []
    for relative, item in walk(locate(name), suffix):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.read_bytes())
        written.append(target)
    return written

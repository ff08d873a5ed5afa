"""``init``: a clinic's own working directory, made from the files shipped in the package.

The site holds ``smartflow.toml`` (the shipped ``config.example.toml`` with every key documented, its
``[engine]`` paths pointing at the site's own copies, its ``[[subscriptions]]`` commented out until the
site goes live), copies of the shipped flows, templates, mappings and sample resources, the JSON
Schemas with a ``.taplo.toml`` associating them, and a README of the next steps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fhir_smartflow import defaults, shipped
from fhir_smartflow.engine.schema import KINDS, schema

CONFIG_NAME = defaults.CONFIG_FILE

# What a site gets: its directory -> the shipped data copied there.
COPIES = {
    "flows": shipped.FLOWS,
    "templates": shipped.TEMPLATES,
    "mappings": shipped.MAPPINGS,
    "samples": shipped.SAMPLES,
}
ENGINE_PATHS = {"mappings": "mappings", "flows": "flows", "templates": "templates"}

_HEADER = re.compile(r"^\s*\[(\[)?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ENGINE_PATH = re.compile(r"^(mappings|flows|templates)\s*=")
_SUBSCRIPTIONS_NOTE = (
    "# Going live: uncomment a [[subscriptions]] table below and export its secret_env variable.\n"
    "# Without any, only `serve --embedded` starts (accepting unauthenticated deliveries, local try-out only).\n"
)


class SiteError(Exception):
    """The site cannot be made there (the directory holds files already)."""


def site_config(example: str) -> str:
    """The site's ``smartflow.toml`` from the example config's text: ``[engine]`` paths at the site's copies
    (relative, so the site can move), every ``[[subscriptions]]`` table commented out."""
    out: list[str] = []
    table = ""
    commenting = False
    replaced: set[str] = set()
    for line in example.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith("#"):
            table = header.group(2)
            array = header.group(1) is not None
            commenting = array and table == "subscriptions"
            if commenting and _SUBSCRIPTIONS_NOTE not in "".join(out):
                out.append(_SUBSCRIPTIONS_NOTE)
        key = _ENGINE_PATH.match(line)
        if table == "engine" and key and not commenting:
            name = key.group(1)
            out.append(f'{name} = ["{ENGINE_PATHS[name]}"]\n')
            replaced.add(name)
            continue
        if commenting and line.strip() and not line.lstrip().startswith("#"):
            line = f"# {line}"
        out.append(line)
    missing = set(ENGINE_PATHS) - replaced
    if missing:  # the example config lost its [engine] keys: the site would run the shipped files
        raise ValueError(f"the example config has no [engine] {', '.join(sorted(missing))} line")
    return "".join(out)


SCHEMA_DIR = "schema"
# Which files each schema is for, by the site's directory of them (a taplo rule each).
SCHEMA_FOR = {"flow": "flows", "template": "templates", "mapping": "mappings"}


def schema_text(kind: str) -> str:
    """The JSON Schema of ``kind`` as written to ``<kind>.schema.json`` (docs/schema/, a site's schema/)."""
    return json.dumps(schema(kind), indent=2) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """``<kind>.schema.json`` for every kind into ``directory`` (created); the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / f"{kind}.schema.json"
        path.write_text(schema_text(kind), encoding="utf-8")
        written.append(path)
    return written


def taplo_config(schema_dir: str, file_dirs: dict[str, str]) -> str:
    """A ``.taplo.toml`` giving each kind's files (``file_dirs[kind]/**/*.toml``) its schema."""
    out = [
        "# taplo / Even Better TOML (VS Code): check and complete fhir-smartflow files against their JSON Schemas",
        "# (`fhir-smartflow schema`). `fhir-smartflow validate` stays the authority.",
    ]
    for kind in KINDS:
        out += ["", "[[rule]]", f'include = ["{file_dirs[kind]}/**/*.toml"]', "[rule.schema]"]
        out.append(f'path = "{schema_dir}/{kind}.schema.json"')
    return "\n".join(out) + "\n"


def create_site(dest: Path) -> list[Path]:
    """Make the site in ``dest`` (created; it must be empty or absent); the files written."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SiteError(f"{dest} exists and is not an empty directory; choose a new one")
    dest.mkdir(parents=True, exist_ok=True)
    config = dest / CONFIG_NAME
    config.write_text(site_config(shipped.read_text(shipped.EXAMPLE_CONFIG)), encoding="utf-8")
    written = [config]
    for directory, name in COPIES.items():
        written += shipped.copy_tree(name, dest / directory)
    readme = dest / "README.md"
    readme.write_text(shipped.read_text(shipped.SITE_README), encoding="utf-8")
    written.append(readme)
    written += write_schemas(dest / SCHEMA_DIR)
    taplo = dest / ".taplo.toml"
    taplo.write_text(taplo_config(SCHEMA_DIR, SCHEMA_FOR), encoding="utf-8")
    written.append(taplo)
    return written

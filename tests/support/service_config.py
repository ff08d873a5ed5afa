"""A config file for the whole service (the shipped flows, mappings and templates) on the test's Redis and
FHIR store: what `serve`, `worker`, a plain `rq worker` or `build_service_runtime` read."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import ROOT


def write_service_config(
    tmp_path: Path, *, prefix: str, redis_url: str = "", fhir_base: str = "", extra: str = ""
) -> Path:
    """``smartflow.toml`` in ``tmp_path``; no ``redis_url`` leaves ``[redis] url`` unset (embedded queue).
    ``extra`` follows the ``[redis]`` keys: more of them, then any other tables."""
    url = f'url = "{redis_url}"\n' if redis_url else ""
    fhir = f'[fhir]\nbase_url = "{fhir_base}"\n' if fhir_base else ""
    path = tmp_path / "smartflow.toml"
    path.write_text(
        f"""
[redis]
{url}key_prefix = "{prefix}"
{extra}
{fhir}
[engine]
flows = ["{ROOT / "flows/examples"}"]
mappings = ["{ROOT / "mappings"}"]
templates = ["{ROOT / "templates"}"]
"""
    )
    return path

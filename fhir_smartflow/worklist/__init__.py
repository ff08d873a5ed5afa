"""The staff worklist: a SMART on FHIR app (EHR and standalone launch) listing the signed-in user's tasks.

Its own Flask app mounted at ``[worklist] path`` beside the webhook: its sessions, CSRF and CSP touch
nothing else. The browser holds only an opaque session id; tokens live server-side (sessions.py).
"""

from __future__ import annotations

from fhir_smartflow.worklist.app import create_worklist_app
from fhir_smartflow.worklist.deps import WorklistDeps

__all__ = ["WorklistDeps", "create_worklist_app"]

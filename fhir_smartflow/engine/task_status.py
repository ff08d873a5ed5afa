"""Task.status (FHIR R4): which statuses are open — work still to do — and which are closed.

Every R4 status is in exactly one of the two sets. Open tasks get reminders and overdue checks and
are cancelled when their workflow ends; closed ones are left alone.
"""

from __future__ import annotations

# In this order in a ``status=`` search (a comma-separated list).
OPEN_TASK_STATUSES = ("draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold")
CLOSED_TASK_STATUSES = frozenset({"completed", "cancelled", "failed", "entered-in-error", "rejected"})
# A recurring series stops when its previous occurrence was called off (completed or failed ones go on).
SERIES_ENDING_STATUSES = frozenset({"cancelled", "entered-in-error", "rejected"})

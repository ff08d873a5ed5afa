"""Follow-up jobs: reminders, overdue checks, recurrences, deferred deliveries."""

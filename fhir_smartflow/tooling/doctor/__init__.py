"""``fhir-smartflow doctor``: checks of a live installation, one line each with the fix.

Each check is one class in the registry (``checks.CHECKS``), the way Home Assistant gives each
condition type its own class: a name, what it looks at, and ``run(context) -> list[Finding]``.
A new check is one class added to the registry; the command and ``--json`` pick it up.
"""

"""Command modules; each defines click commands that fhir_smartflow/cli.py registers."""

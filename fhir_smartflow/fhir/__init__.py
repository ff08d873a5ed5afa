"""FHIR client, resource builders and write-back targets."""

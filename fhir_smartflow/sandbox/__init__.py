"""The built-in sandbox FHIR store: a minimal R4 server that can also send subscription notifications."""

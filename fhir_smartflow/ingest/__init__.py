"""Webhook ingest: parse, authenticate and durably queue FHIR Subscription notifications."""

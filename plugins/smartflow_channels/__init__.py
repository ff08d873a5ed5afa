"""Delivery channels that leave the EHR (SMS, voice, email, webhook) and the FHIR-only ones."""

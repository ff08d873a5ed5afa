"""The CDS Hooks 2.0 service: record prompts (Flags written by the flows) shown as cards when a chart opens.

``app.create_cds_app`` is the Flask app `serve` mounts at ``/cds-services`` when ``[cds] enabled``:
discovery, the ``patient-view`` service and its feedback endpoint. ``tokens`` verifies the CDS client's
signed JWT, ``data`` gathers the Flags and the user's roles from prefetch or, within the time budget, from
the FHIR server through ``fhirAuthorization``, ``cards`` turns them into cards (pure), ``feedback`` records
what the user did with a card. docs/cds-hooks.md describes the whole.
"""

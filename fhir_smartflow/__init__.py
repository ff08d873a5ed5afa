"""fhir-smartflow: Smart Flows workflow automation for EHRs, driven by FHIR Subscriptions."""

__version__ = "0.1.0"

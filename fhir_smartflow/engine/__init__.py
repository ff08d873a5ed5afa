"""Mappings, flows, templates and the pure planner."""

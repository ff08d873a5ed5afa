"""Operator tools behind the CLI: simulate, lint, flow docs, subscriptions, PlanDefinition export."""

"""Channel delivery: address choice, opt-out, quiet hours, claims, retries (plugins do the sending)."""

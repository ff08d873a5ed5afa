"""Doctor checks of deliveries.

* ``stuck-deliveries``: sends still ``sending`` for longer than ``[delivery] stuck_after_seconds`` (a
  worker killed mid-send, and no worker running since to resolve them), and how many were resolved as
  not-done / unknown so far (metric ``stuck_deliveries``).
"""

from __future__ import annotations

from datetime import timedelta

from fhir_smartflow.connections import Keys
from fhir_smartflow.delivery.claims import DeliveryClaims
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.scheduling.clock import make_clock
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding


class StuckDeliveries(Check):
    name = "stuck-deliveries"
    about = "no send is left half-done: interrupted sends are resolved as unknown by a running worker"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        if ctx.settings.embedded_queue:
            return [self.skip("no [redis] url: the embedded queue keeps nothing after the process")]
        settings = ctx.settings
        keys = Keys(settings.redis.key_prefix)
        claims = DeliveryClaims(ctx.redis, keys, settings.redis.dedupe_ttl_seconds)
        after = settings.delivery.stuck_after_seconds
        now = make_clock(ctx.redis, keys, test_clock=settings.scheduler.test_clock)()
        stuck = claims.stuck_count(now - timedelta(seconds=after))
        resolved = sum(int(v) for v in Metrics(ctx.redis, settings.redis.key_prefix).read("stuck_deliveries").values())
        if stuck:
            return [
                self.warn(
                    f"{stuck} send(s) interrupted more than {after:g} s ago and not resolved yet; "
                    f"{resolved} resolved as unknown so far",
                    "start a `fhir-smartflow worker`: it marks them not-done / unknown (check the provider's "
                    "console for whether they went out)",
                )
            ]
        return [self.ok(f"no interrupted send pending; {resolved} resolved as unknown so far (stuck_deliveries)")]

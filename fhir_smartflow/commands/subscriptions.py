"""``fhir-smartflow subscriptions print|sync``: the Subscriptions the enabled flows need on the FHIR server."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from fhir_smartflow.commands.context import CliContext, pass_ctx
from fhir_smartflow.commands.flowtools import engine_path_options, load_or_exit
from fhir_smartflow.config import FHIR_SERVER_KINDS, ConfigError, Settings, secret


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)
    func = click.option(
        "--heartbeat",
        default=300,
        show_default=True,
        type=click.IntRange(0),
        help="backport: heartbeat period (s); a silent channel is how a missed notification is noticed.",
    )(func)
    func = click.option(
        "--endpoint", help="Where the server should POST notifications. Default: http://<host>:<port><notify_path>."
    )(func)
    func = click.option(
        "--style",
        type=click.Choice(["classic", "backport"]),
        default="classic",
        show_default=True,
        help="classic R4 criteria, or R4 Backport IG topic-based subscriptions.",
    )(func)
    return engine_path_options(func)


def _endpoint(settings: Settings, endpoint: str | None) -> str:
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise click.BadParameter("must be an http(s) URL", param_hint="--endpoint")
        return endpoint
    return f"http://{settings.server.host}:{settings.server.port}{settings.server.notify_path}"


def _build(
    cli: CliContext,
    paths: tuple[tuple[str, ...], ...],
    style: str,
    endpoint: str | None,
    heartbeat: int,
    show_secrets: bool,
) -> list[dict[str, Any]]:
    from fhir_smartflow.tooling.subscriptions import build_subscriptions

    settings = cli.settings
    engine = load_or_exit(settings, *paths)
    return build_subscriptions(
        engine, settings, style, _endpoint(settings, endpoint), show_secrets=show_secrets, heartbeat_seconds=heartbeat
    )


def _warn_unauthenticated(resources: list[dict[str, Any]]) -> None:
    from fhir_smartflow.tooling.subscriptions import unauthenticated

    uncovered = unauthenticated(resources)
    if uncovered:
        click.echo(
            f"warning: {len(uncovered)} subscription(s) match no [[subscriptions]] entry with a secret (header "
            f"or hmac) in the config, so the webhook cannot authenticate their notifications: {', '.join(uncovered)}",
            err=True,
        )


def _warn_medplum_signature(settings: Settings) -> None:
    """Medplum signs in X-Signature: an hmac entry reading another header would refuse every delivery."""
    for sub in settings.subscriptions:
        if sub.auth == "hmac" and sub.header.lower() != "x-signature":
            click.echo(
                f"warning: [[subscriptions]] {sub.id}: Medplum sends its signature in X-Signature, not {sub.header}; "
                'set header = "X-Signature"',
                err=True,
            )


def _require_secrets(settings: Settings, why: str) -> None:
    """ConfigError (exit 2) naming every [[subscriptions]] secret_env variable that is not set."""
    missing = [f"${s.secret_env} ({s.id})" for s in settings.subscriptions if not secret(s.secret_env)]
    if missing:
        raise ConfigError("[[subscriptions]] secret_env", f"not set: {', '.join(missing)}; {why}")


@click.group("subscriptions")
def subscriptions_group() -> None:
    """The FHIR Subscription resources the enabled flows need: print them or create / update them."""


@subscriptions_group.command("print")
@_common
@click.option("--show-secrets", is_flag=True, help="Print the shared secrets in channel.header (default: masked).")
@pass_ctx
def print_command(
    cli: CliContext,
    mappings_paths: tuple[str, ...],
    flows_paths: tuple[str, ...],
    templates_paths: tuple[str, ...],
    style: str,
    endpoint: str | None,
    heartbeat: int,
    as_json: bool,
    show_secrets: bool,
) -> None:
    """Print the Subscriptions (R4 JSON) derived from enabled flows → triggers → mappings, plus the Task
    subscription the lifecycle needs (task.completed). Secrets are masked unless --show-secrets.

    Exit codes: 0 printed; 1 the flows do not load; 2 usage error, or --show-secrets with a secret
    environment variable not set.
    """
    if show_secrets:
        _require_secrets(cli.settings, "--show-secrets prints them")
    resources = _build(cli, (mappings_paths, flows_paths, templates_paths), style, endpoint, heartbeat, show_secrets)
    _warn_unauthenticated(resources)
    if as_json:
        click.echo(json.dumps(resources, indent=2))
        return
    for resource in resources:
        click.echo(f"# {resource['reason']}")
        click.echo(json.dumps(resource, indent=2))


@subscriptions_group.command("sync")
@_common
@click.option(
    "--server",
    "server",
    type=click.Choice(list(FHIR_SERVER_KINDS)),
    help="How the server activates Subscriptions: medplum (written active), hapi / generic (written "
    "requested, the server activates). Default: [fhir] server, auto = from its CapabilityStatement.",
)
@click.option(
    "--wait",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for a server that activates requested Subscriptions itself.",
)
@click.option(
    "--rewrite-secrets",
    is_flag=True,
    help="Write the secrets again even where the server shows them masked (doctor's webhook-auth failed).",
)
@pass_ctx
def sync_command(
    cli: CliContext,
    mappings_paths: tuple[str, ...],
    flows_paths: tuple[str, ...],
    templates_paths: tuple[str, ...],
    style: str,
    endpoint: str | None,
    heartbeat: int,
    as_json: bool,
    server: str | None,
    wait: float,
    rewrite_secrets: bool,
) -> None:
    """Create or update the Subscriptions on the [fhir] server, idempotently: each carries a meta.tag
    (identifier system + key) and is found by it, so running sync twice changes nothing the second time
    (it prints "nothing changed"). Each is read back and must be `active`: Medplum gets them written
    `active`, HAPI FHIR and other servers `requested` (they activate them). The service's Device is
    created too when missing.

    Exit codes: 0 in sync and every Subscription active; 1 the flows do not load, the server refused a
    write, a Subscription is not active (the server's reason is printed), or --style backport on a server
    without topic-based subscriptions; 2 a secret environment variable named by [[subscriptions]]
    secret_env is not set, or usage error.
    """
    from fhir_smartflow.fhir.client import FhirClient
    from fhir_smartflow.fhir.device import ensure_service_device
    from fhir_smartflow.fhir.errors import FhirError
    from fhir_smartflow.fhir.server_info import has_subscription_topics, software, topic_subscriptions_supported
    from fhir_smartflow.tooling.subscriptions import not_active, server_kind, sync_subscriptions

    settings = cli.settings
    _require_secrets(settings, "sync writes them into the Subscriptions")
    resources = _build(cli, (mappings_paths, flows_paths, templates_paths), style, endpoint, heartbeat, True)
    _warn_unauthenticated(resources)
    client = FhirClient.from_settings(settings)
    try:
        capabilities = client.capabilities()
        kind = server_kind(capabilities, server or settings.fhir.server)
        if style == "backport" and (
            kind == "medplum"
            or not topic_subscriptions_supported(capabilities, lambda: has_subscription_topics(client))
        ):
            name = software(capabilities) or "this server"
            click.echo(
                f"error: {name} does not support topic-based subscriptions (no backport profile, topic or "
                "SubscriptionTopic in its CapabilityStatement), so it would store these and never notify; "
                "it supports --style classic",
                err=True,
            )
            sys.exit(1)
        if kind == "medplum":
            _warn_medplum_signature(settings)
        if settings.fhir.writeback == "fhir":
            ensure_service_device(client, settings)
        report = sync_subscriptions(client, resources, kind=kind, wait_seconds=wait, rewrite_secrets=rewrite_secrets)
    except (FhirError, OSError) as exc:
        click.echo(f"error: the FHIR server refused: {exc}", err=True)
        sys.exit(1)
    failing = not_active(report)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif all(row["action"] == "unchanged" for row in report) and not failing:
        click.echo(f"nothing changed: {len(report)} Subscription(s) in sync and active")
    else:
        for row in report:
            click.echo(f"{row['action']:11}  {row['status'] or '?':9}  Subscription/{row['id']}  {row['criteria']}")
    for row in failing:
        why = f": {row['error']}" if row["error"] else ""
        click.echo(
            f"error: Subscription/{row['id']} ({row['criteria']}) is {row['status'] or 'without status'}{why}",
            err=True,
        )
    if failing:
        sys.exit(1)

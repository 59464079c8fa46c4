"""`facilitair webhooks list|redeliver|test`: the operator's view of the webhook outbox, on this machine.

Server-side admin commands like `config show`: they read the same settings (flags, FACILITAIR_*), open the store
the server uses (the SQLite file or the PostgreSQL database) and the webhooks file; no server needs to run. A
running server sends what `redeliver` queues again within a second or so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from facilitair.server.settings import ConfigError, Settings
from facilitair.server.store import create_store
from facilitair.server.store.base import EventStore, StoreUnavailable
from facilitair.server.transport import flag_help
from facilitair.server.transport.commands import config_error
from facilitair.server.webhooks.config import WebhookConfig
from facilitair.server.webhooks.outbox import iso
from facilitair.server.webhooks.sender import Outcome, Sender

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TEST_EVENT = "webhook.test"
# What argparse puts in the namespace besides the settings.
_OWN = ("command", "action", "handler", "key", "url", "run", "limit")


def add_webhooks(subparsers: Any) -> None:
    """Add `webhooks list|redeliver|test` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "webhooks", help="webhook endpoints and deliveries: list them, send some again, send a test"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list",
        help="the configured endpoints and the latest deliveries with their state",
        description="Print the endpoints of the webhooks file (and which are disabled), then the latest "
        "deliveries, newest first: webhook-id, state, attempts, last status or error, event, run, endpoint.",
    )
    listing.add_argument("--run", help="only the deliveries of this run (its full id)")
    listing.add_argument("--limit", type=int, default=50, help="most deliveries shown (default 50)")
    again = actions.add_parser(
        "redeliver",
        help="send a delivery (or all of a run's) again from its first attempt",
        description="Queue a delivery again, by its webhook-id (msg_...), or every delivery of a run, by the run's "
        "full id, with the same webhook-id; a disabled endpoint is enabled again. A running server sends it.",
    )
    again.add_argument("key", help="a webhook-id (msg_...) or a run id")
    test = actions.add_parser(
        "test",
        help="send a signed webhook.test message to the endpoints now and show what they answer",
        description="Send a signed `webhook.test` message to every endpoint of the webhooks file (or the one with "
        "this url) from this machine, with the server's checks (allowed targets, no redirects, timeout); exit 1 "
        "when one does not answer 2xx.",
    )
    test.add_argument("url", nargs="?", help="only the endpoint with this url")
    for action, handler in ((listing, _list), (again, _redeliver), (test, _test)):
        source: CliSettingsSource[Settings] = CliSettingsSource(Settings, root_parser=action)
        flag_help.rewrite(action)
        action.set_defaults(handler=lambda args, s=source, h=handler: _run(s, args, h))


def _run(source: CliSettingsSource[Settings], args: argparse.Namespace, handler: Any) -> int:
    given = {k: v for k, v in vars(args).items() if k not in _OWN}
    try:
        settings = Settings(_cli_settings_source=source(parsed_args=given))  # type: ignore[call-arg]
        config = WebhookConfig.from_settings(settings)
        return int(asyncio.run(handler(settings, config, args)))
    except (ConfigError, ValidationError) as exc:
        return config_error(exc)
    except StoreUnavailable as exc:
        print(f"facilitair: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _opened(settings: Settings) -> EventStore:
    store = create_store(settings)
    await store.open()
    return store


async def _list(settings: Settings, config: WebhookConfig, args: argparse.Namespace) -> int:
    store = await _opened(settings)
    try:
        disabled = await store.webhooks.disabled_endpoints()
        rows = await store.webhooks.recent(max(1, args.limit), args.run)
    finally:
        await store.close()
    print("endpoints:" if config.endpoints else "endpoints: none (set --webhooks-file)")
    for e in config.endpoints:
        state = f"disabled: {disabled[e.url]}" if e.url in disabled else "enabled"
        scope = f"  principal={e.principal}" if e.principal else ""
        print(f"  {e.url}  {','.join(sorted(e.events))}{scope}  {state}")
    print("deliveries:" if rows else "deliveries: none")
    for r in rows:
        last = r.last_error or (f"HTTP {r.last_status}" if r.last_status is not None else "-")
        due = f" next {iso(r.next_attempt_at)}" if r.state == "pending" else ""
        print(f"  {r.id}  {r.state}{due}  attempts={r.attempts}  last={last}  {r.event_type}  {r.run_id}  {r.url}")
    return EXIT_OK


async def _redeliver(settings: Settings, _config: WebhookConfig, args: argparse.Namespace) -> int:
    store = await _opened(settings)
    try:
        count = await store.webhooks.redeliver(args.key)
    finally:
        await store.close()
    if count == 0:
        print(f"facilitair: no delivery has the webhook-id or run id {args.key!r}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{count} deliver{'y' if count == 1 else 'ies'} queued again (same webhook-id); a running server sends "
          "them")  # fmt: skip
    return EXIT_OK


async def _test(_settings: Settings, config: WebhookConfig, args: argparse.Namespace) -> int:
    endpoints = [e for e in config.endpoints if args.url in (None, e.url)]
    if not endpoints:
        what = f"no endpoint with url {args.url!r}" if args.url else "no endpoints (set --webhooks-file)"
        print(f"facilitair: {what} in the webhooks file", file=sys.stderr)
        return EXIT_USAGE
    sender = Sender(config.allow, config.timeout, connections=len(endpoints))
    now = time.time()
    body = {"type": TEST_EVENT, "timestamp": iso(now), "data": {"message": "a test from `facilitair webhooks test`"}}
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    try:
        attempts = await asyncio.gather(
            *(sender.send(e, "msg_" + uuid.uuid4().hex, payload, TEST_EVENT) for e in endpoints)
        )
    finally:
        await sender.aclose()
    failed = 0
    for e, a in zip(endpoints, attempts, strict=True):
        if a.outcome is Outcome.DELIVERED:
            print(f"{e.url}  delivered (HTTP {a.status})")
        else:
            failed += 1
            print(f"{e.url}  {a.outcome.value}: {a.error}")
    return EXIT_FAILED if failed else EXIT_OK

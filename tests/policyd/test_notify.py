"""Destinations against a real HTTP server: bodies, retries, giving up, a full queue."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from policyd.compiler import CompileOptions
from policyd.daemon import Daemon, Settings
from policyd.flowlog.records import AuditEvent
from policyd.notify import Destination, Notifier, text_of
from topology import load

GRANT = {
    "id": "g7",
    "identity": "vendor-tech",
    "conduit": "vendor-maintenance",
    "duration": "2h",
    "reason": "firmware",
}


class Receiver:
    def __init__(self, fail_first: int = 0, status: int = 500) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.hits = 0
        self.fail_first, self.status = fail_first, status

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hits <= self.fail_first:
            return web.Response(status=self.status)
        assert request.content_type == "application/json"
        self.bodies.append(await request.json())
        return web.Response(status=204)


async def serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


def run(receiver: Receiver, events: list[str], **kw: Any) -> tuple[Notifier, list[Any]]:
    failures: list[Any] = []

    async def go() -> Notifier:
        runner, url = await serve(receiver)
        n = Notifier(on_failure=lambda e, d: failures.append((e, d)), first_backoff=0.01, **kw)
        n.start()
        hooks = (Destination("soc", url, "json"), Destination("chat", url, "slack"))
        for event in events:
            n.notify(event, {"grant": GRANT, "gateway": "plant-a", "by": "shift-lead-1"}, hooks)
        await asyncio.wait_for(n.drained(), 10)
        await n.stop()
        await runner.cleanup()
        return n

    return asyncio.run(go()), failures


def test_json_and_slack_bodies_arrive() -> None:
    r = Receiver()
    n, failures = run(r, ["grant_requested"])
    assert n.counts["sent"] == 2 and not failures
    generic = next(b for b in r.bodies if "event" in b)
    assert generic["event"] == "grant_requested" and generic["grant"]["id"] == "g7"
    chat = next(b for b in r.bodies if "text" in b)
    assert chat["text"].startswith("[plant-a] Access request g7: vendor-tech")


def test_server_errors_are_retried_until_delivered() -> None:
    r = Receiver(fail_first=3)
    n, failures = run(r, ["grant_approved"])
    assert n.counts["sent"] == 2 and n.counts["retried"] == 3 and not failures


def test_a_dead_receiver_is_given_up_on_and_reported() -> None:
    r = Receiver(fail_first=100)
    n, failures = run(r, ["grant_expired"], attempts=3)
    assert n.counts["failed"] == 2 and n.counts["sent"] == 0
    assert {f[0] for f in failures} == {"notification_failed"}
    assert {f[1]["reason"] for f in failures} == {"HTTP 500"}


def test_client_errors_are_not_retried() -> None:
    r = Receiver(fail_first=100, status=400)
    n, _ = run(r, ["grant_denied"], attempts=5)
    assert r.hits == 2 and n.counts["retried"] == 0 and n.counts["failed"] == 2


def test_a_full_queue_drops_and_counts() -> None:
    r = Receiver()
    n, failures = run(r, ["grant_requested"] * 5, queue_size=1)
    # the worker may take one before the next is queued; at least some are dropped, each counted
    assert n.counts["dropped"] == len([f for f in failures if f[0] == "notification_dropped"])
    assert n.counts["dropped"] + n.counts["sent"] // 2 == 5


def test_texts_name_the_grant_and_the_actor() -> None:
    data = {"grant": GRANT, "by": "shift-lead-1"}
    assert "Approved by shift-lead-1" in text_of("grant_approved", data)
    assert "EMERGENCY ACCESS" in text_of("emergency_opened", data)
    assert json.dumps(data)  # bodies are JSON-safe


def test_the_daemon_posts_a_conduits_grant_events_to_its_webhooks(tmp_path: Path) -> None:
    """The wiring: an audited grant event of a conduit with `notify:` reaches its webhook
    (URL read from url_file on the gateway), with the actor and the gateway named."""
    r = Receiver()

    async def go() -> None:
        runner, url = await serve(r)
        (tmp_path / "hook.url").write_text(url + "\n")
        (tmp_path / "t.yaml").write_text(TOPO.replace("URL_FILE", str(tmp_path / "hook.url")))
        settings = Settings(tmp_path / "t.yaml", "plant-a", CompileOptions(tunnels=("zg*",)))
        daemon = Daemon(settings)
        daemon.topology = load(tmp_path / "t.yaml").topology
        daemon.notifier.start()
        grant = {"id": "g1", "identity": "vendor-tech", "conduit": "vendor-writes"}
        daemon.audit(AuditEvent("grant_requested", actor="vendor-tech", details=grant))
        daemon.audit(AuditEvent("policy_applied"))  # not a grant event: not posted
        await asyncio.wait_for(daemon.notifier.drained(), 10)
        await daemon.notifier.stop()
        await runner.cleanup()

    asyncio.run(go())
    assert len(r.bodies) == 1
    assert r.bodies[0]["text"].startswith("[plant-a] Access request g1: vendor-tech")


TOPO = """\
version: 1
sites:
  plant-a:
    gateway: {underlay: 192.0.2.10, overlay: 100.64.0.1}
    zones:
      control: {cidr: 10.10.1.0/24, security_level: 2}
    assets:
      plc-1: {zone: control, address: 10.10.1.5}
roles:
  vendor: {}
  lead: {}
identities:
  vendor-tech: {kind: user, roles: [vendor], overlay: 100.64.2.10}
  shift-lead-1: {kind: user, roles: [lead], overlay: 100.64.1.1}
conduits:
  vendor-writes:
    from: {roles: [vendor]}
    to: {asset: plant-a/plc-1}
    allow: [{modbus: [read, write]}]
    approval: {by: [lead], max: 4h}
    notify: [ops-chat]
webhooks:
  ops-chat: {url_file: URL_FILE, format: slack}
"""

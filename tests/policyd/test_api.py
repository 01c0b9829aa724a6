"""The control API without the kernel: schemas, rules, JSON errors, audit, hardening.

The kernel side is an in-memory fake here (tests/policyd/fake_kernel.py); the
namespace tests drive a real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from policyd.api.app import make_app
from policyd.api.context import ControlState
from policyd.flowlog.records import AuditEvent
from policyd.grant_service import GrantService
from policyd.grants import GrantBook
from tests.policyd.fake_kernel import FakeKernel
from topology import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
ROOT: Callable[[web.Request], int | None] = lambda _r: 0  # noqa: E731


async def tunnel_is_loopback(address: IPv4Address) -> bool:
    return address == IPv4Address("127.0.0.1")


class World:
    def __init__(self) -> None:
        self.now = NOW
        self.audits: list[AuditEvent] = []
        book = GrantBook(load(EXAMPLE).topology)
        self.kernel = FakeKernel(lambda: book.topology, lambda: self.now)
        self.service = GrantService(book, self.kernel, self.audits.append, clock=lambda: self.now)
        self.state = ControlState(
            service=self.service,
            gateway="plant-a",
            clock=lambda: self.now,
            via_tunnel=tunnel_is_loopback,
            peer_uid=ROOT,
        )

    @property
    def events(self) -> list[tuple[str, AuditEvent]]:
        return [(e.action, e) for e in self.audits]

    @property
    def book(self) -> GrantBook:
        return self.service.book


Scenario = Callable[[TestClient[Any, Any], World], Awaitable[None]]


def run(scenario: Scenario, local: bool = True, world: World | None = None) -> World:
    world = world or World()

    async def main() -> None:
        async with TestClient(TestServer(make_app(world.state, local=local))) as client:
            await scenario(client, world)

    asyncio.run(main())
    return world


REQUEST = {"conduit": "vendor-maintenance", "duration": "2h", "reason": "firmware"}


@pytest.mark.sr("SR 1.13 RE1", "SR 2.8")
def test_request_approve_revoke_flow() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.post(
            "/v1/grants",
            json={
                "conduit": "vendor-maintenance",
                "duration": "2h",
                "reason": "firmware",
                "as": "vendor-tech",
            },
        )
        assert r.status == 201, await r.text()
        gid = (await r.json())["id"]
        r = await client.post(f"/v1/grants/{gid}/approve", json={"as": "vendor-tech"})
        assert r.status == 403 and "cannot approve" in (await r.json())["error"]
        assert world.kernel.table == {}
        world.now += timedelta(minutes=10)
        r = await client.post(
            f"/v1/grants/{gid}/approve", json={"as": "shift-lead-1", "note": "ok, ticket 7"}
        )
        assert r.status == 200 and (await r.json())["state"] == "active"
        assert world.kernel.table == {
            ("vendor-maintenance", "100.64.2.10"): (gid, world.now + timedelta(hours=2))
        }
        r = await client.get("/v1/grants")
        assert [g["state"] for g in (await r.json())["grants"]] == ["active"]
        r = await client.post(
            f"/v1/grants/{gid}/revoke", json={"as": "shift-lead-1", "note": "done early"}
        )
        assert r.status == 200 and (await r.json())["state"] == "revoked"
        assert world.kernel.table == {}
        assert world.kernel.sessions_ended == [("vendor-maintenance", "100.64.2.10")]

    world = run(scenario)
    assert [e for e, _ in world.events] == ["grant_requested", "grant_approved", "grant_revoked"]
    assert world.events[1][1].actor == "local:shift-lead-1"
    # notes reach the audit trail
    assert world.events[1][1].details["note"] == "ok, ticket 7"
    assert world.events[2][1].details["note"] == "done early"


@pytest.mark.sr("SR 2.1 RE3", "SR 2.8")
def test_emergency_opens_at_once_and_is_audited() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        body = {"conduit": "safety-emergency", "duration": "30m", "reason": "SIS trip"}
        r = await client.post("/v1/emergency", json={**body, "as": "safety-engineer-1"})
        assert r.status == 201 and (await r.json())["emergency"] is True
        r = await client.post(
            "/v1/emergency", json={**body, "duration": "2h", "as": "safety-engineer-1"}
        )
        assert r.status == 422 and "capped at 1h" in (await r.json())["error"]

    world = run(scenario)
    assert list(world.kernel.table) == [("safety-emergency", "100.64.1.30")]
    assert [e for e, _ in world.events] == ["emergency_opened"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 422, "is not of type 'object'"),
        (
            b'{"conduit": "vendor-maintenance", "reason": "x", "as": "vendor-tech"}',
            422,
            "'duration' is a required",
        ),
        (
            b'{"conduit": "vendor-maintenance", "duration": "soon", "reason": "x", "as": "vendor-tech"}',
            422,
            "duration",
        ),
        (
            b'{"conduit": "vendor-maintenance", "duration": "1h", "reason": "x", "as": "vendor-tech", "admin": true}',
            422,
            "Additional properties",
        ),
        (
            b'{"conduit": 7, "duration": "1h", "reason": "x", "as": "vendor-tech"}',
            422,
            "conduit: 7 is not of type",
        ),
        (
            b'{"conduit": "vendor-maintenance", "duration": "1h", "reason": "x"}',
            400,
            "say which identity",
        ),
        (
            b'{"conduit": "vendor-maintenance", "duration": "1h", "reason": "x", "as": "ghost"}',
            403,
            "unknown identity",
        ),
        (
            b'{"conduit": "vendor-maintenance", "duration": "9h", "reason": "x", "as": "vendor-tech"}',
            422,
            "exceeds",
        ),
    ],
)
def test_malformed_bodies_get_4xx_with_reasons_and_change_nothing(
    payload: bytes, status: int, message: str
) -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.post(
            "/v1/grants", data=payload, headers={"Content-Type": "application/json"}
        )
        data = await r.json()
        assert r.status == status and message in data["error"], data

    world = run(scenario)
    assert world.book.grants == {} and world.events == [] and world.kernel.table == {}


@pytest.mark.sr("SR 1.1")
def test_remote_callers_are_their_tunnel_address_only() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        body = {"conduit": "vendor-maintenance", "duration": "1h", "reason": "x"}
        r = await client.post("/v1/grants", json={**body, "as": "vendor-tech"})
        assert r.status == 400 and "tunnel says who you are" in (await r.json())["error"]
        # 127.0.0.1 "arrived through a tunnel" in this world, but is nobody's overlay.
        r = await client.post("/v1/grants", json=body)
        assert r.status == 403 and "not an identity's overlay" in (await r.json())["error"]

        async def nowhere(address: IPv4Address) -> bool:
            return False

        world.state.via_tunnel = nowhere
        r = await client.post("/v1/grants", json=body)
        assert r.status == 403 and "did not arrive through a tunnel" in (await r.json())["error"]

    world = run(scenario, local=False)
    assert world.book.grants == {}


def test_status_metrics_health_openapi() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        assert (await (await client.get("/v1/health")).json())["ok"] is True
        status = await (await client.get("/v1/status")).json()
        assert status["grants"]["active"] == 0
        r = await client.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        spec = await (await client.get("/v1/openapi.json")).json()
        assert "/v1/grants/{grant_id}/approve" in spec["paths"]
        r = await client.get("/v1/nothing")
        assert r.status == 404 and "error" in await r.json()

    run(scenario)


@pytest.mark.sr("SR 6.1 RE1", "SR 6.2")
def test_live_flow_stream_as_json_lines() -> None:
    from policyd.flowlog.records import Record
    from policyd.flowlog.sinks import LiveStream

    live = LiveStream("plant-a")

    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.get("/v1/flows?events=bogus")
        assert r.status == 422 and "unknown bogus" in (await r.json())["error"]
        r = await client.get("/v1/flows?events=deny")
        assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson"
        await asyncio.sleep(0.05)  # let the handler subscribe
        live.write(Record({"event": "flow", "identity": "engineer-1"}))
        live.write(Record({"event": "deny", "identity": "vendor-tech", "reason": "default"}))
        line = await asyncio.wait_for(r.content.readline(), 5)
        assert b'"vendor-tech"' in line and b'"deny"' in line  # the flow record was filtered
        r.close()

    world = World()
    world.state.live = live

    async def main() -> None:
        async with TestClient(TestServer(make_app(world.state, local=True))) as client:
            await scenario(client, world)

    asyncio.run(main())


def test_flow_stream_without_recorder_is_503() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.get("/v1/flows")
        assert r.status == 503 and "no-flow-log" in (await r.json())["error"]

    run(scenario)


def test_a_grant_the_kernel_refuses_is_not_left_active() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        world.kernel.refuse_add = True
        r = await client.post("/v1/grants", json={**REQUEST, "as": "vendor-tech"})
        gid = (await r.json())["id"]
        r = await client.post(f"/v1/grants/{gid}/approve", json={"as": "shift-lead-1"})
        assert r.status == 503 and "did not open" in (await r.json())["error"]
        assert world.book.get(gid).state.value == "requested"
        r = await client.post(
            "/v1/emergency",
            json={
                "conduit": "safety-emergency",
                "duration": "10m",
                "reason": "x",
                "as": "safety-engineer-1",
            },
        )
        assert r.status == 503
        assert [g.conduit for g in world.book.grants.values()] == ["vendor-maintenance"]

    world = run(scenario)
    assert [e for e, _ in world.events] == ["grant_requested"]

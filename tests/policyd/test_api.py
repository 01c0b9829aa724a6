"""The control API without the kernel: schemas, rules, JSON errors, audit, OpenAPI.

The kernel side is a recorder here; the namespace tests drive a real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from policyd.api.app import make_app
from policyd.api.context import ControlState
from policyd.grants import GrantBook
from topology import load
from topology.model import Conduit, Identity

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class RecordingEnforcer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int]] = []

    def open_grant(self, identity: Identity, conduit: Conduit, timeout: timedelta) -> None:
        self.calls.append(("open", identity.name, conduit.name, int(timeout.total_seconds())))

    def close_grant(self, identity: Identity, conduit: Conduit) -> None:
        self.calls.append(("close", identity.name, conduit.name, 0))


class World:
    def __init__(self) -> None:
        self.enforcer = RecordingEnforcer()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.now = NOW
        self.state = ControlState(
            book=GrantBook(load(EXAMPLE).topology),
            enforcer=self.enforcer,
            audit=lambda event, fields: self.events.append((event, fields)),
            gateway="plant-a",
            clock=lambda: self.now,
            via_tunnel=lambda address: address == IPv4Address("127.0.0.1"),
        )


Scenario = Callable[[TestClient[Any, Any], World], Awaitable[None]]


def run(scenario: Scenario, local: bool = True) -> World:
    world = World()

    async def main() -> None:
        async with TestClient(TestServer(make_app(world.state, local=local))) as client:
            await scenario(client, world)

    asyncio.run(main())
    return world


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
        assert world.enforcer.calls == []
        world.now += timedelta(minutes=10)
        r = await client.post(f"/v1/grants/{gid}/approve", json={"as": "shift-lead-1"})
        assert r.status == 200 and (await r.json())["state"] == "active"
        assert world.enforcer.calls == [("open", "vendor-tech", "vendor-maintenance", 7200)]
        r = await client.get("/v1/grants")
        assert [g["state"] for g in (await r.json())["grants"]] == ["active"]
        r = await client.post(f"/v1/grants/{gid}/revoke", json={"as": "shift-lead-1"})
        assert r.status == 200 and (await r.json())["state"] == "revoked"
        assert world.enforcer.calls[-1] == ("close", "vendor-tech", "vendor-maintenance", 0)

    world = run(scenario)
    assert [e for e, _ in world.events] == ["grant_requested", "grant_approved", "grant_revoked"]
    assert world.events[1][1]["by"] == "local:shift-lead-1"


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
    assert world.enforcer.calls == [("open", "safety-engineer-1", "safety-emergency", 1800)]
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
    assert world.state.book.grants == {} and world.events == [] and world.enforcer.calls == []


@pytest.mark.sr("SR 1.1")
def test_remote_callers_are_their_tunnel_address_only() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        body = {"conduit": "vendor-maintenance", "duration": "1h", "reason": "x"}
        r = await client.post("/v1/grants", json={**body, "as": "vendor-tech"})
        assert r.status == 400 and "tunnel says who you are" in (await r.json())["error"]
        # 127.0.0.1 "arrived through a tunnel" in this world, but is nobody's overlay.
        r = await client.post("/v1/grants", json=body)
        assert r.status == 403 and "not an identity's overlay" in (await r.json())["error"]
        world.state.via_tunnel = lambda address: False
        r = await client.post("/v1/grants", json=body)
        assert r.status == 403 and "did not arrive through a tunnel" in (await r.json())["error"]

    world = run(scenario, local=False)
    assert world.state.book.grants == {}


def test_status_metrics_health_openapi() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        assert (await (await client.get("/v1/health")).json())["ok"] is True
        status = await (await client.get("/v1/status")).json()
        assert status["grants"]["active"] == 0
        text = await (await client.get("/metrics")).text()
        assert 'zonegate_grants{state="active"} 0' in text
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
    from policyd.grants import GrantError

    class Refusing(RecordingEnforcer):
        def open_grant(self, identity: Identity, conduit: Conduit, timeout: timedelta) -> None:
            raise GrantError(500, "kernel refused the grant: test")

    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        world.state.enforcer = Refusing()
        r = await client.post(
            "/v1/grants",
            json={
                "conduit": "vendor-maintenance",
                "duration": "1h",
                "reason": "x",
                "as": "vendor-tech",
            },
        )
        gid = (await r.json())["id"]
        r = await client.post(f"/v1/grants/{gid}/approve", json={"as": "shift-lead-1"})
        assert r.status == 500 and "kernel refused" in (await r.json())["error"]
        assert world.state.book.get(gid).state.value == "requested"
        r = await client.post(
            "/v1/emergency",
            json={
                "conduit": "safety-emergency",
                "duration": "10m",
                "reason": "x",
                "as": "safety-engineer-1",
            },
        )
        assert r.status == 500
        assert [g.conduit for g in world.state.book.grants.values()] == ["vendor-maintenance"]

    world = run(scenario)
    assert [e for e, _ in world.events] == ["grant_requested"]

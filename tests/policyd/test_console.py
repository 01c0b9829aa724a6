"""The approvals console over real HTTP: who sees what, forms, tokens, TOTP, headers, SSE.

Identities have loopback overlay addresses here (127.0.1.x) so a client bound to one
of them is that identity, exactly as a tunnel source address is on a gateway. The
browser test (tests/policyd/test_console_browser.py) runs the same console in
namespaces with real tunnels' addresses and a real Chromium.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from policyd.api.app import make_app
from policyd.api.context import ControlState
from policyd.console.events import Broadcaster
from policyd.flowlog.records import AuditEvent
from policyd.grant_service import GrantService
from policyd.grants import GrantBook, GrantState
from policyd.totp import TotpStore, code_at
from tests.policyd.fake_kernel import FakeKernel
from topology import load

TOPO = """\
version: 1
sites:
  plant-a:
    gateway: {underlay: 192.0.2.10, overlay: 127.0.1.1}
    zones:
      control: {cidr: 10.10.1.0/24, security_level: 3}
    assets:
      plc-1: {zone: control, address: 10.10.1.5}
roles:
  vendor: {}
  lead: {}
  ops: {}
identities:
  vendor-tech: {kind: user, roles: [vendor], overlay: 127.0.1.10}
  vendor-2: {kind: user, roles: [vendor], overlay: 127.0.1.11}
  shift-lead-1: {kind: user, roles: [lead], overlay: 127.0.1.21}
  shift-lead-2: {kind: user, roles: [lead], overlay: 127.0.1.22}
  operator-1: {kind: user, roles: [ops], overlay: 127.0.1.30}
conduits:
  vendor-writes:
    from: {roles: [vendor]}
    to: {asset: plant-a/plc-1}
    allow: [{modbus: [read, write]}]
    approval: {by: [lead], max: 4h, count: 2, second_factor: totp}
    record: true
"""
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


class Console:
    def __init__(self, tmp: Path) -> None:
        (tmp / "t.yaml").write_text(TOPO)
        self.now = NOW
        self.audits: list[AuditEvent] = []
        book = GrantBook(load(tmp / "t.yaml").topology)
        self.kernel = FakeKernel(lambda: book.topology, lambda: self.now)
        self.events = Broadcaster()

        def audit(e: AuditEvent) -> None:
            self.audits.append(e)
            if e.action.startswith("grant_"):
                self.events.publish({"action": e.action, "grant": dict(e.details)})

        self.service = GrantService(book, self.kernel, audit, clock=lambda: self.now)
        self.totp = TotpStore(tmp / "totp")
        self.secrets = {}
        for lead in ("shift-lead-1", "shift-lead-2"):
            self.totp.enrol(lead, "test")
            self.secrets[lead] = (tmp / "totp" / f"{lead}.totp").read_text().strip()

        async def tunnel(_a: IPv4Address) -> bool:
            return True

        self.state = ControlState(
            service=self.service,
            gateway="plant-a",
            clock=lambda: self.now,
            via_tunnel=tunnel,
            operators=frozenset({"operator-1"}),
            totp=self.totp,
            audit=audit,
            events=self.events,
        )
        self.url = ""

    def code(self, lead: str) -> str:
        return code_at(self.secrets[lead], self.now.timestamp())


ADDR = {
    "vendor-tech": "127.0.1.10",
    "vendor-2": "127.0.1.11",
    "shift-lead-1": "127.0.1.21",
    "shift-lead-2": "127.0.1.22",
    "operator-1": "127.0.1.30",
}


@pytest.fixture
def console(tmp_path: Path) -> Console:
    return Console(tmp_path)


def served(test: Callable[[Console], Awaitable[None]]) -> Callable[[Console], None]:
    """Run an async test body against the console served on a real TCP socket."""

    @functools.wraps(test)
    def run(console: Console) -> None:
        async def go() -> None:
            runner = web.AppRunner(make_app(console.state, local=False))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            console.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            try:
                await test(console)
            finally:
                await runner.cleanup()

        asyncio.run(go())

    return run


async def get(c: Console, who: str, path: str, **kw: Any) -> tuple[int, str, Any]:
    conn = aiohttp.TCPConnector(local_addr=(ADDR[who], 0))
    async with aiohttp.ClientSession(connector=conn) as s, s.get(c.url + path, **kw) as r:
        return r.status, await r.text(), r.headers


async def post(c: Console, who: str, path: str, form: dict[str, str], **kw: Any) -> tuple[int, str]:
    conn = aiohttp.TCPConnector(local_addr=(ADDR[who], 0))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.post(c.url + path, data=form, allow_redirects=True, **kw) as r,
    ):
        return r.status, await r.text()


def token_in(page: str) -> str:
    m = re.search(r'name="token" value="([0-9a-f]+)"', page)
    assert m, "no form token on the page"
    return m.group(1)


async def request_grant(c: Console, who: str = "vendor-tech") -> str:
    g = await c.service.request(who, "vendor-writes", timedelta(hours=1), "pump firmware", who)
    return g.id


@served
async def test_each_identity_sees_only_what_its_roles_allow(console: Console) -> None:
    mine = await request_grant(console, "vendor-tech")
    theirs = await request_grant(console, "vendor-2")
    _, page, _ = await get(console, "vendor-tech", "/console/requests")
    assert mine in page and theirs not in page and "waiting for approval" in page
    assert 'action="/console/grants/' not in page  # a requester gets no decision forms
    _, page, _ = await get(console, "shift-lead-1", "/console/requests")
    assert mine in page and theirs in page
    assert "10.10.1.5" in page and "modbus/read" in page  # what the grant opens
    assert "0 of 2" in page


@served
async def test_dual_approval_with_totp_through_the_forms(console: Console) -> None:
    gid = await request_grant(console)
    for n, lead in enumerate(("shift-lead-1", "shift-lead-2"), start=1):
        _, page, _ = await get(console, lead, "/console/requests")
        form = {"token": token_in(page), "note": f"ok {n}", "code": console.code(lead)}
        status, _ = await post(console, lead, f"/console/grants/{gid}/approve", form)
        assert status == 200
        console.now += timedelta(seconds=31)  # next TOTP step
    grant = console.service.book.get(gid)
    assert grant.state is GrantState.ACTIVE
    assert grant.approvals == ("shift-lead-1", "shift-lead-2")
    assert [el.tag for el in console.kernel.elements("vendor-writes")] == [gid]


@served
async def test_wrong_or_missing_code_is_refused_and_audited(console: Console) -> None:
    gid = await request_grant(console)
    _, page, _ = await get(console, "shift-lead-1", "/console/requests")
    form = {"token": token_in(page), "code": "000000"}
    status, body = await post(console, "shift-lead-1", f"/console/grants/{gid}/approve", form)
    assert status == 401 and "wrong second-factor code" in body
    assert console.service.book.get(gid).approvals == ()
    assert [e.action for e in console.audits][-1] == "second_factor_failed"


@served
async def test_forged_or_foreign_tokens_are_refused(console: Console) -> None:
    gid = await request_grant(console)
    _, page, _ = await get(console, "shift-lead-2", "/console/requests")
    stolen = token_in(page)  # shift-lead-2's token, replayed by shift-lead-1
    form = {"token": stolen, "code": console.code("shift-lead-1")}
    status, body = await post(console, "shift-lead-1", f"/console/grants/{gid}/approve", form)
    assert status == 403 and "no valid token" in body
    status, _ = await post(console, "shift-lead-1", f"/console/grants/{gid}/approve", {})
    assert status == 403


@served
async def test_a_cross_site_form_post_is_refused(console: Console) -> None:
    gid = await request_grant(console)
    _, page, _ = await get(console, "shift-lead-1", "/console/requests")
    form = {"token": token_in(page), "code": console.code("shift-lead-1")}
    headers = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    status, _ = await post(
        console, "shift-lead-1", f"/console/grants/{gid}/approve", form, headers=headers
    )
    assert status == 403 and console.service.book.get(gid).approvals == ()


@served
async def test_revoke_from_the_console_closes_the_kernel_element(console: Console) -> None:
    gid = await request_grant(console)
    for lead in ("shift-lead-1", "shift-lead-2"):
        await console.service.approve(gid, lead, lead)
    _, page, _ = await get(console, "operator-1", "/console/grants")
    assert gid in page
    # operator-1 is not an approver: it sees the grant but the conduit asks a TOTP code
    # it has not enrolled, so it cannot revoke from a remote browser
    form = {"token": token_in(page), "code": "123456"}
    status, body = await post(console, "operator-1", f"/console/grants/{gid}/revoke", form)
    assert status == 401 and "no second factor enrolled" in body
    _, page, _ = await get(console, "shift-lead-1", "/console/grants")
    form = {"token": token_in(page), "code": console.code("shift-lead-1"), "note": "done"}
    status, _ = await post(console, "shift-lead-1", f"/console/grants/{gid}/revoke", form)
    assert status == 200
    assert console.service.book.get(gid).state is GrantState.REVOKED
    assert console.kernel.elements("vendor-writes") == []


@served
async def test_pages_carry_strict_security_headers(console: Console) -> None:
    for path in ("/console/requests", "/console/grants", "/console/flows", "/console/audit"):
        status, page, headers = await get(console, "operator-1", path)
        assert status == 200, page
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "<script>" not in page
    status, _, headers = await get(console, "operator-1", "/console/static/console.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, _, _ = await get(console, "operator-1", "/console/static/../../totp.py")
    assert status == 404


@served
async def test_live_events_reach_only_those_who_may_see_them(console: Console) -> None:
    async def first_event(who: str) -> str | None:
        conn = aiohttp.TCPConnector(local_addr=(ADDR[who], 0))
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.get(console.url + "/console/events") as r,
        ):
            try:
                async with asyncio.timeout(1.5):
                    async for line in r.content:
                        if line.startswith(b"data:"):
                            return line.decode()
            except TimeoutError:
                return None
        return None

    lead = asyncio.create_task(first_event("shift-lead-1"))
    other_vendor = asyncio.create_task(first_event("vendor-2"))
    await asyncio.sleep(0.3)
    gid = await request_grant(console, "vendor-tech")
    assert gid in (await lead or "")
    assert await other_vendor is None


@served
async def test_a_requester_asks_through_the_form(console: Console) -> None:
    _, page, _ = await get(console, "vendor-tech", "/console/requests")
    assert 'id="ask"' in page and "vendor-writes" in page
    form = {
        "token": token_in(page),
        "conduit": "vendor-writes",
        "duration": "30m",
        "reason": "replace pump firmware",
    }
    status, page = await post(console, "vendor-tech", "/console/request", form)
    assert status == 200 and ": requested" in page
    [g] = console.service.book.grants.values()
    assert (g.identity, g.reason) == ("vendor-tech", "replace pump firmware")
    _, page, _ = await get(console, "shift-lead-1", "/console/requests")
    assert 'id="ask"' not in page  # leads may ask for nothing here

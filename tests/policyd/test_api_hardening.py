"""The control API under abuse: cross-site requests, wrong content types, other local
users, thousands of connections, slow clients. Each test names the finding it guards.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.policyd.test_api import REQUEST, World, run

HERE = Path(__file__).resolve().parent
ROOT_DIR = HERE.parents[1]


def test_mutations_need_a_json_content_type_and_a_body() -> None:
    """Finding: remote approval worked with Content-Type: text/plain and no body."""

    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.post("/v1/grants", json={**REQUEST, "as": "vendor-tech"})
        gid = (await r.json())["id"]
        url = f"/v1/grants/{gid}/approve"
        for kwargs, status, text in (
            (
                {"data": b'{"as": "shift-lead-1"}', "headers": {"Content-Type": "text/plain"}},
                415,
                "application/json",
            ),
            ({}, 415, "application/json"),
            (
                {"data": b"", "headers": {"Content-Type": "application/json"}},
                400,
                "JSON object body",
            ),
            (
                {
                    "data": b'{"note": "x\\ud800", "as": "shift-lead-1"}',
                    "headers": {"Content-Type": "application/json"},
                },
                422,
                "lone surrogate",
            ),
        ):
            r = await client.post(url, **kwargs)
            assert r.status == status and text in (await r.json())["error"], await r.text()
        assert world.book.get(gid).state.value == "requested" and world.kernel.table == {}

    run(scenario)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_requests_are_refused(headers: dict[str, str]) -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.post("/v1/grants", json={**REQUEST, "as": "vendor-tech"}, headers=headers)
        assert r.status == 403 and "cross-site" in (await r.json())["error"]
        r = await client.get("/v1/grants", headers=headers)
        assert r.status == 403
        same = {"Origin": str(client.make_url("")).rstrip("/")}
        r = await client.get("/v1/grants", headers=same)
        assert r.status == 200, await r.text()

    world = run(scenario)
    assert world.book.grants == {}


def test_local_callers_act_only_as_the_identities_their_uid_maps_to() -> None:
    """Finding: anyone in the socket's group could act "as" any approver."""
    world = World()
    world.state.peer_uid = lambda _r: 1000
    world.state.local_users = {1000: frozenset({"vendor-tech"})}

    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.post("/v1/grants", json=REQUEST)  # 'as' implied: its one identity
        assert r.status == 201, await r.text()
        gid = (await r.json())["id"]
        r = await client.post(f"/v1/grants/{gid}/approve", json={"as": "shift-lead-1"})
        assert r.status == 403 and "may act only as vendor-tech" in (await r.json())["error"]
        world.state.peer_uid = lambda _r: 1001  # mapped to nobody
        r = await client.get("/v1/grants")
        assert r.status == 403 and "mapped to no identity" in (await r.json())["error"]

    run(scenario, world=world)
    assert [e for e, _ in world.events] == ["grant_requested"]


def test_status_and_metrics_only_for_operators() -> None:
    world = World()
    world.state.peer_uid = lambda _r: 1000
    world.state.local_users = {1000: frozenset({"vendor-tech", "shift-lead-1"})}

    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        for path in ("/v1/status", "/metrics"):
            r = await client.get(path)
            assert r.status == 403, await r.text()
        world.state.peer_uid = lambda _r: 0
        assert (await client.get("/v1/status")).status == 200

    run(scenario, world=world)


def test_metrics_have_prometheus_types() -> None:
    from policyd.api.metrics import Sample, exposition

    text = exposition(
        lambda: [
            Sample("grants", "by state", "gauge", ("state",), {("active",): 2.0}),
            Sample("flow_records_total", "written", "counter", ("kind",), {("flow",): 5.0}),
        ]
    )().decode()
    assert "# TYPE zonegate_grants gauge" in text
    assert "# TYPE zonegate_flow_records_total counter" in text
    assert 'zonegate_flow_records_total{kind="flow"} 5.0' in text


def test_peer_credentials_on_a_real_unix_socket(tmp_path: Path) -> None:
    """SO_PEERCRED from the kernel, not a claim: another uid cannot act as root would."""
    sockdir = Path(tempfile.mkdtemp(prefix="zg-peercred-", dir="/tmp"))
    sockdir.chmod(0o755)  # pytest's tmp_path is 0700 to everyone but root
    sock = sockdir / "api.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.policyd.api_server", str(sock), "127.0.0.1", "0"],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        call = (
            "import aiohttp,asyncio,json,sys\n"
            "async def m():\n"
            f"  async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path='{sock}')) as s:\n"
            "    async with s.post('http://x/v1/grants', json={'conduit':'vendor-maintenance',"
            "'duration':'1h','reason':'x','as':'vendor-tech'}) as r:\n"
            "      print(r.status, (await r.json()).get('error', ''))\n"
            "asyncio.run(m())\n"
        )
        as_root = subprocess.run(
            [sys.executable, "-c", call], capture_output=True, text=True, cwd=ROOT_DIR
        )
        assert as_root.stdout.startswith("201"), as_root.stderr
        as_nobody = subprocess.run(
            [sys.executable, "-c", call],
            capture_output=True,
            text=True,
            cwd=ROOT_DIR,
            user=65534,
            group=0,  # the socket's group (mode 0660): only the uid check stops it
            env={"PYTHONPATH": str(ROOT_DIR), "HOME": "/tmp"},
        )
        assert "403 uid 65534 is mapped to no identity" in as_nobody.stdout, as_nobody.stderr
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.policyd.api_server",
            str(tmp_path / "api.sock"),
            "127.0.0.1",
            str(port),
            "512",
            "64",
            "2",
        ],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield server, port
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_clients_are_cut_off_by_the_header_timeout(
    api_server: tuple[subprocess.Popen[str], int],
) -> None:
    """Finding: no header timeout; idle connections were held forever."""
    _server, port = api_server
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    s.settimeout(10)
    t0 = time.monotonic()
    assert s.recv(100) == b""  # closed by the server
    assert time.monotonic() - t0 < 8
    s.close()


def test_two_thousand_concurrent_connections_leave_policyd_up_and_small(
    api_server: tuple[subprocess.Popen[str], int],
) -> None:
    """Finding: 1,100 idle connections made policyd exit (EMFILE); 2,000 GETs grew it to
    1.9 GB. Here 2,000 clients from 40 source addresses connect and ask at once."""
    server, port = api_server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
    before = _rss_kb(server.pid)

    async def one(i: int) -> int:
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + i % 40}", 0), force_close=True)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=30)
                ) as s,
                s.get(f"http://127.0.0.1:{port}/v1/grants") as r,
            ):
                await r.read()
                return r.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return 0

    async def storm() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(2000)))

    statuses = asyncio.run(storm())
    assert server.poll() is None, "policyd's API process died"
    grown_mb = (_rss_kb(server.pid) - before) / 1024
    assert grown_mb <= 100, f"RSS grew {grown_mb:.0f} MB"
    assert statuses.count(403) > 0  # answered (127.0.0.x is nobody's overlay address)
    # and it still answers afterwards
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in s.recv(1000)
    print(
        json.dumps(
            {"statuses": {st: statuses.count(st) for st in set(statuses)}, "grown_mb": grown_mb}
        )
    )


def test_a_body_arriving_in_pieces_is_read_whole_and_a_huge_one_refused() -> None:
    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        body = json.dumps({**REQUEST, "as": "vendor-tech", "reason": "x" * 400}).encode()

        async def pieces() -> Any:
            for i in range(0, len(body), 7):
                yield body[i : i + 7]
                await asyncio.sleep(0)

        headers = {"Content-Type": "application/json"}
        r = await client.post("/v1/grants", data=pieces(), headers=headers)
        assert r.status == 201, await r.text()
        r = await client.post("/v1/grants", data=b"{" + b" " * 70_000 + b"}", headers=headers)
        assert r.status == 413 and "error" in await r.json()

    run(scenario)


def test_a_local_user_with_several_identities_reads_what_each_may_see() -> None:
    world = World()
    world.state.peer_uid = lambda _r: 1000
    world.state.local_users = {1000: frozenset({"vendor-tech", "engineer-1"})}
    world.state.operators = frozenset({"engineer-1"})

    async def scenario(client: TestClient[Any, Any], world: World) -> None:
        r = await client.post("/v1/grants", json={**REQUEST, "as": "vendor-tech"})
        assert r.status == 201, await r.text()
        r = await client.post("/v1/grants", json=REQUEST)
        assert r.status == 400 and "say which identity" in (await r.json())["error"]
        r = await client.get("/v1/grants")
        assert r.status == 200 and len((await r.json())["grants"]) == 1
        assert (await client.get("/v1/status")).status == 200  # engineer-1 is an operator

    run(scenario, world=world)

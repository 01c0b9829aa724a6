"""`zonegate grant` end to end against a served API on a unix socket."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.api.app import serve
from tests.policyd.test_api import World
from zonegate.cli import main


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[World, Path]]:
    world = World()
    sock = tmp_path / "policyd.sock"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runners: list[Any] = []

    async def start() -> None:
        runners.extend(await serve(world.state, sock, overlay=None))
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(5), "API did not start"
    try:
        yield world, sock
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def zg(sock: Path, *args: str) -> list[str]:
    return ["grant", "--socket", str(sock), *args]


def test_grant_cli_round_trip(
    served: tuple[World, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    world, sock = served
    assert (
        main(
            zg(
                sock,
                "--as",
                "vendor-tech",
                "--json",
                "request",
                "--conduit",
                "vendor-maintenance",
                "--duration",
                "1h",
                "--reason",
                "pump firmware",
            )
        )
        == 0
    )
    gid = json.loads(capsys.readouterr().out)["id"]
    assert main(zg(sock, "--as", "vendor-tech", "approve", gid)) == 1
    assert "cannot approve or deny its own grant" in capsys.readouterr().err
    assert main(zg(sock, "--as", "shift-lead-1", "approve", gid)) == 0
    assert f"grant {gid}: active" in capsys.readouterr().out
    assert main(zg(sock, "list")) == 0
    out = capsys.readouterr().out
    assert "vendor-maintenance" in out and "active" in out and "pump firmware" in out
    assert list(world.kernel.table) == [("vendor-maintenance", "100.64.2.10")]
    assert world.kernel.table[("vendor-maintenance", "100.64.2.10")][0] == gid


def test_grant_cli_says_when_policyd_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(zg(tmp_path / "none.sock", "list")) == 1
    assert "cannot reach policyd" in capsys.readouterr().err


def test_request_wait_prints_the_decision(
    served: tuple[World, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    world, sock = served
    done = threading.Event()

    def approve_soon() -> None:
        # the approver decides while the requester's --wait is polling
        for _ in range(100):
            pending = [g for g in world.book.grants.values() if g.state.value == "requested"]
            if pending:
                main(zg(sock, "--as", "shift-lead-1", "approve", pending[0].id))
                done.set()
                return
            threading.Event().wait(0.05)

    approver = threading.Thread(target=approve_soon)
    approver.start()
    argv = zg(sock, "--as", "vendor-tech", "request", "--conduit", "vendor-maintenance")
    assert main([*argv, "--duration", "1h", "--reason", "pump", "--wait"]) == 0
    approver.join(10)
    assert done.is_set()
    out = capsys.readouterr()
    assert "waiting for the decision" in out.err and ": active (vendor-tech" in out.out


def test_api_address_comes_from_the_profile(tmp_path: Path) -> None:
    from policyd.grant_client import api_from_profile

    profile = tmp_path / "p.json"
    gws = [
        {"site": "plant-a", "api": "http://100.64.0.1:9780"},
        {"site": "plant-b", "api": "http://100.64.0.2:9780"},
    ]
    profile.write_text(json.dumps({"identity": "vendor-tech", "gateways": gws}))
    assert api_from_profile(str(profile), "plant-b") == "http://100.64.0.2:9780"
    with pytest.raises(OSError, match="say which gateway"):
        api_from_profile(str(profile), None)


def test_grant_cli_unreachable_under_json_is_a_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["grant", "--socket", str(tmp_path / "none.sock"), "--json", "list"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "zonegate.error/1" and "cannot reach policyd" in doc["error"]

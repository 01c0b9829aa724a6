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
    assert world.enforcer.calls == [("open", "vendor-tech", "vendor-maintenance", 3600)]


def test_grant_cli_says_when_policyd_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(zg(tmp_path / "none.sock", "list")) == 1
    assert "cannot reach policyd" in capsys.readouterr().err


def test_grant_cli_unreachable_under_json_is_a_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["grant", "--socket", str(tmp_path / "none.sock"), "--json", "list"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "zonegate.error/1" and "cannot reach policyd" in doc["error"]

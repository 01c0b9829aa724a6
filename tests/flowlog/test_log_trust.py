"""A log you can trust: exact loss on a full disk (a real tmpfs in a mount namespace),
and a hash chain that `zonegate audit verify` checks across rotated files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policyd.flowlog.auditchain import AuditChain, verify
from policyd.flowlog.records import AuditEvent, audit_record
from policyd.flowlog.sinks import JsonLinesFile, rotated_paths
from zonegate.cli import main as zonegate

ROOT_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.root
def test_full_disk_loss_is_counted_exactly_and_recorded_when_space_returns(
    tmp_path: Path,
) -> None:
    """Finding: a full disk undercounted loss; stop on a full disk ended in a traceback."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare not found: apt-get install util-linux")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "tests.flowlog.fulldisk",
            str(mnt),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["lost_while_full"] > 0, r  # the disk did fill up
    assert r["in_file"] + r["lost"] == r["total"], r  # every record is in the file or counted
    assert r["declared"] == r["lost"] == r["declared_seqs"], r  # and the file says so
    assert r["chain_ok"], r  # the declared gap is not mistaken for tampering
    assert r["mode"] == "0o640"


def _log(tmp_path: Path, n: int = 30, max_bytes: int = 2000) -> Path:
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path, max_bytes=max_bytes)
    chain = AuditChain()
    for i in range(n):
        rec = audit_record("gw", AuditEvent("grant_approved", actor="a", message=f"grant {i}"))
        chain.seal(rec.data)
        sink.write(rec)
    sink.close()
    return path


def _edit(path: Path, lineno: int, change: str) -> None:
    files = rotated_paths(path)
    lines = [(f, line) for f in files for line in f.read_text().splitlines(keepends=True)]
    target_file, line = lines[lineno]
    text = target_file.read_text()
    if change == "edit":
        text = text.replace(line, line.replace('"grant_approved"', '"grant_denied"'))
    elif change == "delete":
        text = text.replace(line, "")
    target_file.write_text(text)


def test_an_intact_chain_verifies_across_rotated_files(tmp_path: Path) -> None:
    path = _log(tmp_path)
    assert len(rotated_paths(path)) > 2
    v = verify([path])
    assert v.ok and v.records == 30 and (v.first, v.last) == (1, 30), v.problems
    assert zonegate(["audit", "verify", str(path)]) == 0


@pytest.mark.parametrize("change", ["edit", "delete"])
def test_verify_detects_an_edited_or_deleted_record(tmp_path: Path, change: str) -> None:
    path = _log(tmp_path)
    _edit(path, 12, change)
    v = verify([path])
    assert not v.ok and v.problems
    assert zonegate(["audit", "verify", str(path)]) == 1


def test_verify_detects_reordered_records(tmp_path: Path) -> None:
    path = _log(tmp_path, max_bytes=10_000_000)
    lines = path.read_text().splitlines(keepends=True)
    lines[5], lines[6] = lines[6], lines[5]
    path.write_text("".join(lines))
    assert not verify([path]).ok


def test_verify_detects_a_deleted_rotated_file(tmp_path: Path) -> None:
    path = _log(tmp_path)
    rotated_paths(path)[1].unlink()
    v = verify([path])
    assert not v.ok and "deleted" in " ".join(v.problems)


def test_the_chain_resumes_across_restarts(tmp_path: Path) -> None:
    path = _log(tmp_path, n=5)
    chain = AuditChain.resume(path)
    assert chain.seq == 5
    sink = JsonLinesFile(path)
    rec = audit_record("gw", AuditEvent("daemon_start"))
    chain.seal(rec.data)
    sink.write(rec)
    sink.close()
    v = verify([path])
    assert v.ok and v.last == 6

"""The console in a real browser against a real policyd (IEC 62443 SR 2.1 RE4, SR 1.1 RE2).

Headless Chromium (Debian's) runs in the identity namespace; the source address it
uses (set per step with a route's `src`) is the identity, as a tunnel's address is.
The story: a vendor requests write access; two shift leads approve with TOTP codes;
the grant opens in the kernel and the vendor's Modbus session appears on the grants
page; a lead revokes it there and the session ends; another vendor never sees the
request; a form posted from another origin is refused.

Screenshots land in the test's tmp dir, or in $ZONEGATE_SCREENSHOTS when set
(docs/img, for docs/remote-access.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policyd.totp import code_at
from tests.policyd.nsnet import HERE, IDENTITIES, PLC2, PY, Net, topology_yaml
from tests.policyd.test_daemon_ns import Policyd

pytestmark = pytest.mark.root
CONSOLE = "http://100.64.0.1:9780/console"
LEAD_2 = "100.64.1.21"
VENDOR_2 = "100.64.2.11"


def topology() -> str:
    text = topology_yaml()
    text = text.replace(
        "approval: {by: [shift-lead], max: 4h}",
        "approval: {by: [shift-lead], max: 4h, count: 2, second_factor: totp}",
    )
    extra = (
        f"  lead-2: {{kind: user, roles: [shift-lead], overlay: {LEAD_2}}}\n"
        f"  vendor-2: {{kind: user, roles: [vendor], overlay: {VENDOR_2}}}\n"
    )
    return text.replace("conduits:\n", extra + "conduits:\n", 1)


class Browser:
    def __init__(self, net: Net, shots: Path) -> None:
        self.net, self.shots = net, shots
        for addr in (LEAD_2, VENDOR_2):
            net.ns(net.ident, "ip", "addr", "add", f"{addr}/16", "dev", net.tag + "a")

    def visit(self, who: str, path: str, steps: list[dict[str, Any]], shot: str = "") -> Any:
        src = {"lead-2": LEAD_2, "vendor-2": VENDOR_2}.get(who) or IDENTITIES[who]
        self.net.ns(
            self.net.ident,
            "ip",
            "route",
            "replace",
            "100.64.0.1/32",
            "dev",
            self.net.tag + "a",
            "src",
            src,
        )
        argv = [PY, str(HERE / "browser_step.py"), CONSOLE + path, json.dumps(steps)]
        if shot:
            argv.append(str(self.shots / shot))
        out = self.net.ns(self.net.ident, *argv, check=False, timeout=90)
        assert out.returncode == 0, f"browser failed:\n{out.stdout}\n{out.stderr[-3000:]}"
        return json.loads(out.stdout.strip().splitlines()[-1])


def secret(run: Path, who: str) -> str:
    return (run / "totp" / f"{who}.totp").read_text().strip()


def test_request_dual_approval_with_totp_session_and_revoke_in_a_browser(
    net: Net, tmp_path: Path
) -> None:
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Chromium missing: run scripts/bootstrap (apt-get install chromium)")
    shots = Path(os.environ.get("ZONEGATE_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology())
    d = Policyd(net, topo, "--api-listen", "100.64.0.1")
    d.wait_for("control API on")
    run = d.socket.parent
    for lead in ("lead-1", "lead-2"):
        subprocess.run(
            [PY, "-m", "policyd.cli", "totp", "--state-dir", str(run), "enroll", lead, "--no-qr"],
            check=True,
            capture_output=True,
        )
    b = Browser(net, shots)

    # 1. The vendor asks for write access in the console.
    res = b.visit(
        "vendor-1",
        "/requests",
        [
            {"select": "#ask select[name=conduit]", "value": "vendor-maintenance"},
            {"fill": "#ask input[name=duration]", "value": "30m"},
            {"fill": "#ask input[name=reason]", "value": "replace pump firmware"},
            {"click": "#ask button"},
        ],
        "console-1-request.png",
    )
    assert res["status"] == 200, res
    gid = re.search(r"(g[\w-]+): requested", res["text"]).group(1)  # type: ignore[union-attr]
    assert not net.modbus("vendor-1", PLC2, "write")

    # 2. Another vendor does not see it.
    res = b.visit("vendor-2", "/requests", [])
    assert gid not in res["text"]

    # 3. Two leads approve, each with a TOTP code; the first approval opens nothing.
    for n, lead in enumerate(("lead-1", "lead-2"), start=1):
        code = code_at(secret(run, lead), datetime.now(UTC).timestamp())
        row = f'tr[data-grant="{gid}"]'
        res = b.visit(
            lead,
            "/requests",
            [
                {"fill": f"{row} form[action$=approve] input[name=code]", "value": code},
                {"fill": f"{row} form[action$=approve] input[name=note]", "value": f"ok {n}"},
                {"click": f"{row} form[action$=approve] button"},
            ],
            f"console-{n + 1}-approve.png",
        )
        assert res["status"] == 200, res
        if n == 1:
            assert "1 approval(s) so far" in res["text"]
            assert not net.modbus("vendor-1", PLC2, "write"), "opened after one approval"
    assert "active" in res["text"]
    assert net.modbus("vendor-1", PLC2, "write"), d.log()

    # 4. The vendor's live session shows on the grants page; a lead revokes it there.
    session_proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            net.ident,
            PY,
            str(HERE / "modbus_session.py"),
            IDENTITIES["vendor-1"],
            PLC2,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{HERE.parents[1]}:{HERE}"},
    )
    try:
        assert session_proc.stdin is not None and session_proc.stdout is not None
        assert json.loads(session_proc.stdout.readline())["connected"]
        session_proc.stdin.write("write\n")
        session_proc.stdin.flush()
        assert json.loads(session_proc.stdout.readline())["ok"]
        res = b.visit("lead-1", "/grants", [], "console-4-session.png")
        assert f"tcp {IDENTITIES['vendor-1']}" in res["text"], res["text"]
        code = code_at(secret(run, "lead-1"), datetime.now(UTC).timestamp() + 30)
        row = f'tr[data-grant="{gid}"]'
        res = b.visit(
            "lead-1",
            "/grants",
            [
                {"fill": f"{row} input[name=code]", "value": code},
                {"fill": f"{row} input[name=note]", "value": "work done"},
                {"click": f"{row} form button"},
            ],
            "console-5-revoked.png",
        )
        assert res["status"] == 200 and "revoked" in res["text"], res
        session_proc.stdin.write("write\n")
        session_proc.stdin.flush()
        assert not json.loads(session_proc.stdout.readline())["ok"], "the session outlived revoke"
    finally:
        session_proc.kill()
        session_proc.wait(timeout=5)
    assert not net.modbus("vendor-1", PLC2, "write")

    # 5. A form posted from another origin is refused, and changes nothing.
    res = b.visit(
        "vendor-1",
        "/requests",
        [
            {"select": "#ask select[name=conduit]", "value": "vendor-maintenance"},
            {"fill": "#ask input[name=reason]", "value": "again"},
            {"click": "#ask button"},
        ],
    )
    gid2 = re.search(r"(g[\w-]+): requested", res["text"]).group(1)  # type: ignore[union-attr]
    token_page = b.visit("lead-2", "/requests", [])
    assert gid2 in token_page["text"]
    res = b.visit(
        "lead-2",
        "/requests",
        [
            {
                "post_from_elsewhere": f"{CONSOLE}/grants/{gid2}/approve",
                "fields": {"token": "x", "code": "123456"},
            }
        ],
    )
    assert res["status"] == 403, res
    audit = [json.loads(x) for x in d.flow_log.read_text().splitlines() if x.strip()]
    approvals = [
        a
        for a in audit
        if a.get("action") == "grant_approval_recorded" and a.get("details", {}).get("id") == gid2
    ]
    assert approvals == []

"""Dual approval, second factors and webhooks in the topology: read, checked, located."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.topology.conftest import BASE
from tests.topology.test_errors import errors_of, line_of
from topology import load

LEADS = BASE.replace(
    "  lead-1: {kind: user, roles: [lead], overlay: 100.64.1.2}\n",
    "  lead-1: {kind: user, roles: [lead], overlay: 100.64.1.2}\n"
    "  lead-2: {kind: user, roles: [lead], overlay: 100.64.1.3}\n",
)
APPROVED = LEADS.replace(
    "tests:\n",
    """\
  lead-writes:
    from: {roles: [engineer]}
    to: {asset: site-a/plc-1}
    allow: [{modbus: write}]
    approval: {by: [lead], max: 2h, count: 2, second_factor: totp}
    notify: [ops-chat]
webhooks:
  ops-chat: {url: "https://chat.example/hook/T0", format: slack}
tests:
""",
)


def test_dual_approval_and_webhooks_are_read(write_topology: Callable[[str], Path]) -> None:
    topo = load(write_topology(APPROVED)).topology
    c = topo.conduits["lead-writes"]
    assert c.approval is not None and c.approval.count == 2
    assert c.second_factor == "totp" and c.notify == ("ops-chat",)
    assert topo.webhooks["ops-chat"].format == "slack"
    assert "T0" not in repr(topo.webhooks["ops-chat"])
    assert "2 approvals by lead with totp" in c.approval.describe()


@pytest.mark.parametrize(
    ("old", "new", "message", "needle"),
    [
        # eng-1 requests (role engineer) and is one of three approvers: only two are left.
        (
            "by: [lead], max: 2h, count: 2",
            "by: [lead, eng-1], max: 2h, count: 3",
            "besides the requester, but eng-1 would have only 2",
            "lead-writes:",
        ),
        (
            "count: 2",
            "count: 3",
            "needs 3 distinct approvers but only 2 identities",
            "lead-writes:",
        ),
        (
            "second_factor: totp",
            "second_factor: sms",
            "unknown second factor 'sms'",
            "second_factor: sms",
        ),
        ("count: 2", "count: 0", "count", "count: 0"),
        (
            "notify: [ops-chat]",
            "notify: [ops-chta]",
            "unknown webhook 'ops-chta'",
            "notify: [ops-chta]",
        ),
        (
            'url: "https://chat.example/hook/T0"',
            'url: "ftp://x"',
            "must start with https://",
            "ftp://x",
        ),
        (
            'url: "https://chat.example/hook/T0", ',
            "",
            "needs exactly one of url or url_file",
            "ops-chat: {format",
        ),
    ],
)
def test_mistakes_are_located(
    write_topology: Callable[[str], Path], old: str, new: str, message: str, needle: str
) -> None:
    text = APPROVED.replace(old, new)
    diags = errors_of(write_topology(text))
    hits = [d for d in diags if message in d.message]
    assert hits, [str(d) for d in diags]
    assert hits[0].location.line == line_of(text, needle)

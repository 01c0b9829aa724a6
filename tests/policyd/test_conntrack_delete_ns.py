"""conntrack.delete on the real kernel: by original tuple and id, in any conntrack zone
(issue 12 keeps steered client legs in zone 1), leaving other entries alone."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.netns import Namespaces
from tests.policyd.nsnet import ENV, PY

pytestmark = pytest.mark.root

CODE = """
import json
from policyd.flowlog import conntrack
flows = [f for f in conntrack.dump() if f.mark == 0x5a000001]
n = conntrack.delete(flows)
again = conntrack.delete(flows)  # already gone: not an error
left = [(f.src, f.zone) for f in conntrack.dump()]
print(json.dumps({"zones": sorted({f.zone for f in flows}), "deleted": n, "again": again, "left": left}))
"""


@pytest.fixture
def ns() -> Iterator[str]:
    if shutil.which("conntrack") is None:
        raise AssertionError("conntrack missing: apt-get install conntrack")
    with Namespaces("zk") as nets:
        yield nets.add(nets.tag)


def insert(ns: str, src: str, sport: int, mark: int, zone: int) -> None:
    argv = ["ip", "netns", "exec", ns, "conntrack", "-I", "-s", src, "-d", "10.10.1.5"]
    argv += ["-p", "tcp", "--sport", str(sport), "--dport", "502", "--state", "ESTABLISHED"]
    argv += ["--timeout", "300", "-m", str(mark), "-w", str(zone)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_delete_by_tuple_in_every_zone(ns: str) -> None:
    insert(ns, "100.64.1.10", 40001, 0x5A000001, 0)
    insert(ns, "100.64.1.10", 40002, 0x5A000001, 1)
    insert(ns, "100.64.1.11", 40003, 0x5A000002, 0)
    out = subprocess.run(
        ["ip", "netns", "exec", ns, PY, "-c", CODE], capture_output=True, text=True, env=ENV
    )
    assert out.returncode == 0, out.stderr
    import json

    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["zones"] == [0, 1] and res["deleted"] == 2 and res["again"] == 0, res
    assert res["left"] == [["100.64.1.11", 0]], res

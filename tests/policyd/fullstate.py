"""Run inside `unshare --mount`: the grant service with its state on a small tmpfs that
fills up. Prints one JSON line with what was refused, acknowledged and reloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from policyd.grants import GrantError
from tests.policyd.test_grant_service import Gateway, run


def main(mnt: Path) -> dict[str, object]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    gw = Gateway(mnt)
    run(gw.service.start())
    ok: list[str] = []
    refused, reason = 0, ""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # take every free block
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    os.close(fd)
    svc = gw.service
    for i in range(40):
        try:
            g = run(
                svc.request("vendor-tech", "vendor-maintenance", timedelta(hours=1), f"r{i}", "v")
            )
            ok.append(g.id)
            run(svc.deny(g.id, "shift-lead-1", "shift-lead-1"))
        except GrantError as exc:
            refused += 1
            reason = exc.reason
    filler.unlink()
    after = run(svc.request("vendor-tech", "vendor-maintenance", timedelta(hours=1), "x", "v"))
    ok.append(after.id)
    gw.restart()
    known = set(gw.service.book.grants)
    return {
        "acknowledged": len(ok),
        "refused": refused,
        "reason": reason,
        "all_acknowledged_reloaded": set(ok) <= known,
        "unacknowledged_reloaded": len(known - set(ok)),
    }


print(json.dumps(main(Path(sys.argv[1]))))

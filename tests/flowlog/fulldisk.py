"""Run inside `unshare --mount`: fill a small tmpfs through the file sink, free space,
go on, and print what the sink counted and what the file holds (one JSON line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from policyd.flowlog.auditchain import AuditChain, verify
from policyd.flowlog.records import AuditEvent, audit_record
from policyd.flowlog.sinks import JsonLinesFile


def main() -> None:
    mnt = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * 40_000)
    sink = JsonLinesFile(mnt / "flows.jsonl", gateway="gw")
    chain = AuditChain()
    total = 0
    for phase in range(2):
        for i in range(300 if phase == 0 else 60):  # the second phase fits
            rec = audit_record("gw", AuditEvent("grant_requested", message=f"{phase}-{i}" * 3))
            chain.seal(rec.data)
            sink.write(rec)
            total += 1
            if i % 10 == 9:
                sink.flush()
        sink.flush()
        if phase == 0:
            full_lost = sink.lost
            filler.unlink()  # space returns
            os.sync()
    sink.close()
    lines = [json.loads(x) for x in (mnt / "flows.jsonl").read_text().splitlines()]
    audits = [r for r in lines if r["event"] == "audit"]
    losses = [r for r in lines if r["event"] == "loss"]
    verdict = verify([mnt / "flows.jsonl"])
    print(
        json.dumps(
            {
                "total": total,
                "in_file": len(audits),
                "lost": sink.lost,
                "lost_while_full": full_lost,
                "declared": sum(r["lost"] for r in losses),
                "declared_seqs": sum(len(r.get("audit_seqs_lost", [])) for r in losses),
                "chain_ok": verdict.ok,
                "problems": verdict.problems[:3],
                "mode": oct((mnt / "flows.jsonl").stat().st_mode & 0o777),
            }
        )
    )


main()

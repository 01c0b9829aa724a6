"""`policyd --topology PATH --gateway NAME`: enforce a topology on this gateway.

Runs in the foreground and logs every step. At start it loads, compiles and applies
(a broken file at start exits non-zero and leaves whatever ruleset runs untouched).
It reloads when the files change (polled) or on SIGHUP: a broken new file is rejected
with every error logged and the last good policy stays in force. A change that only
moves identities in or out of conduits is applied as set-element adds/deletes; any
other change replaces the table atomically. It also recompiles at the ruleset's
`next_change` (a DST switch, an identity becoming valid). SIGTERM/SIGINT leave the
ruleset in place (fail closed) unless --flush-on-exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import topology
from policyd.compiler import CompileError, CompileOptions, Ruleset, compile_ruleset
from policyd.kernel import NftError, NftHandle
from policyd.render import canonical
from topology.diagnostics import TopologyError

log = logging.getLogger("policyd")


def fingerprint(path: Path) -> str:
    """A hash of every topology file's name and content (what a reload would read)."""
    files = [path] if path.is_file() else sorted(path.rglob("*.y*ml"))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


def structure(rs: Ruleset) -> str:
    """The ruleset without the members of identity sets: equal means a sync suffices."""
    member_sets = {
        p.identity_set for p in rs.conduits.values() if p.identity_set and not p.needs_grant
    }
    out = []
    for o in canonical(rs.objects):
        body = o.get("set")
        if body and body["name"] in member_sets:
            o = {"set": {k: v for k, v in body.items() if k != "elem"}}
        out.append(o)
    return json.dumps(out, sort_keys=True)


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.path = Path(args.topology)
        self.gateway: str = args.gateway
        self.options = CompileOptions(
            tunnels=tuple(args.tunnel or ("zg*",)), api_port=args.api_port
        )
        self.poll: float = args.poll
        self.flush_on_exit: bool = args.flush_on_exit
        self.wake = threading.Event()
        self.stop = False
        self.hup = False
        self.nft = NftHandle()
        self.current: Ruleset | None = None
        self.seen = ""

    def compile(self) -> Ruleset | None:
        """Load and compile; on any error log all of it and return None."""
        try:
            loaded = topology.load(self.path)
        except TopologyError as e:
            for d in e.diagnostics:
                log.error("%s", d)
            log.error("rejected %s: %d problem(s)", self.path, len(e.diagnostics))
            return None
        except OSError as e:
            log.error("rejected %s: %s", self.path, e)
            return None
        for d in loaded.diagnostics:
            log.warning("%s", d)
        try:
            rs = compile_ruleset(
                loaded.topology, self.gateway, now=datetime.now(UTC), options=self.options
            )
        except CompileError as e:
            log.error("rejected %s: %s", self.path, e)
            return None
        for note in rs.notes:
            log.warning("%s", note)
        return rs

    def enforce(self, rs: Ruleset) -> bool:
        try:
            if self.current is not None and structure(rs) == structure(self.current):
                added, deleted = self.nft.sync_members(rs)
                log.info("membership synced: %d added, %d deleted (no reload)", added, deleted)
            else:
                kept = self.nft.apply_ruleset(rs)
                rules = sum(1 for o in rs.objects if "rule" in o)
                log.info(
                    "applied ruleset for %s: %d rules (%d in hook chains), %d conduits, "
                    "%d grants kept; next change %s",
                    rs.gateway,
                    rules,
                    rs.hook_rule_count(),
                    len(rs.conduits),
                    kept,
                    rs.next_change.isoformat() if rs.next_change else "none",
                )
        except NftError as e:
            log.error("%s; keeping the last good policy", e)
            return False
        self.current = rs
        return True

    def reload(self, why: str) -> None:
        log.info("reload (%s)", why)
        rs = self.compile()
        if rs is None:
            log.error("keeping the last good policy in force")
            return
        self.enforce(rs)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stop = True
        self.wake.set()

    def run(self) -> int:
        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.on_signal)
        self.seen = fingerprint(self.path)
        rs = self.compile()
        if rs is None or not self.enforce(rs):
            log.error("no policy applied; the running ruleset (if any) is unchanged")
            return 2
        while not self.stop:
            timeout = self.poll
            if self.current and self.current.next_change:
                left = (self.current.next_change - datetime.now(UTC)).total_seconds()
                timeout = max(0.0, min(timeout, left))
            self.wake.wait(timeout)
            self.wake.clear()
            if self.stop:
                break
            if self.hup:
                self.hup = False
                self.seen = fingerprint(self.path)
                self.reload("SIGHUP")
                continue
            now_fp = fingerprint(self.path)
            if now_fp != self.seen:
                self.seen = now_fp
                self.reload("file changed")
            elif (
                self.current
                and self.current.next_change
                and datetime.now(UTC) >= self.current.next_change
            ):
                self.reload("scheduled change")
        if self.flush_on_exit:
            self.nft.flush_table()
            log.info("exiting: table flushed (--flush-on-exit)")
        else:
            log.info("exiting: ruleset left in place (fail closed)")
        return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="policyd", description=__doc__.splitlines()[0])
    p.add_argument("--topology", required=True, help="topology file or directory")
    p.add_argument("--gateway", required=True, help="the site whose gateway this is")
    p.add_argument(
        "--tunnel",
        action="append",
        help="tunnel interface name (repeatable; trailing * is a wildcard; default zg*)",
    )
    p.add_argument("--api-port", type=int, default=None, help="control API port on the overlay")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between file checks")
    p.add_argument("--flush-on-exit", action="store_true", help="delete our table on exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    try:
        return Daemon(args).run()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grants survive a policyd restart: the book is saved as JSON after every change.

The kernel keeps enforcing (and expiring) grants while policyd is down; this file
lets the restarted daemon still list, revoke and audit them by id.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from policyd.grants import Grant, GrantBook

log = logging.getLogger("policyd")


class GrantStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, book: GrantBook) -> int:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("grant state %s unreadable (%s); starting with no grants", self.path, exc)
            return 0
        for item in data.get("grants", []):
            try:
                grant = Grant.from_dict(item)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("grant state %s: skipping a bad entry (%s)", self.path, exc)
                continue
            book.grants[grant.id] = grant
        return len(book.grants)

    def save(self, book: GrantBook) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        text = json.dumps({"grants": [g.as_dict() for g in book.grants.values()]}, indent=1)
        tmp.write_text(text)
        os.replace(tmp, self.path)

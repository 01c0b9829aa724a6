"""Problems found in topology files, each tied to FILE:LINE:COL.

Loading never stops at the first problem: every check adds diagnostics to one
collector, and the caller gets all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Location:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    location: Location | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.severity}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def as_dict(self) -> dict[str, object]:
        loc = self.location
        return {
            "severity": self.severity,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.col if loc else None,
            "message": self.message,
            "hint": self.hint or None,
        }


class Diagnostics:
    """Collects problems in the order they are found; sorted by place on output."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, location: Location | None, message: str, hint: str = "") -> None:
        self.items.append(Diagnostic("error", location, message, hint))

    def warning(self, location: Location | None, message: str, hint: str = "") -> None:
        self.items.append(Diagnostic("warning", location, message, hint))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "warning"]

    def sorted(self) -> list[Diagnostic]:
        far = Location("~", 0, 0)
        return sorted(self.items, key=lambda d: (d.location or far, d.message))


class TopologyError(Exception):
    """Raised by `load()` when the files have errors; carries every diagnostic."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if d.severity == "error"]
        super().__init__(f"{len(errors)} error(s) in topology")

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)

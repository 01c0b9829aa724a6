"""Problems found in topology files, each tied to FILE:LINE:COL and a stable code.

Loading never stops at the first problem: every check adds diagnostics to one
collector, and the caller gets all of them at once. One mistake gives one diagnostic:
a problem marked as a root cause (a YAML error, an ambiguous number) silences later
problems at the same place, and the loader drops the follow-on errors of a file that
could not be read (see loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from topology.codes import classify

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
    code: str = ""  # ZG-E... / ZG-W...; filled by Diagnostics from the message if not given

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.severity}: {self.message}" + (f" [{self.code}]" if self.code else "")
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def as_dict(self) -> dict[str, object]:
        loc = self.location
        return {
            "code": self.code,
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
        self._roots: set[Location] = set()

    def add(
        self,
        severity: Severity,
        location: Location | None,
        message: str,
        hint: str = "",
        code: str = "",
        root: bool = False,
    ) -> None:
        if location is not None and location in self._roots:
            return  # a follow-on of the root cause already reported here
        if root and location is not None:
            self._roots.add(location)
        self.items.append(
            Diagnostic(severity, location, message, hint, code or classify(severity, message))
        )

    def error(
        self,
        location: Location | None,
        message: str,
        hint: str = "",
        code: str = "",
        root: bool = False,
    ) -> None:
        self.add("error", location, message, hint, code, root)

    def warning(
        self, location: Location | None, message: str, hint: str = "", code: str = ""
    ) -> None:
        self.add("warning", location, message, hint, code)

    def silence(self, location: Location) -> None:
        """Later problems at `location` are follow-ons of one already reported."""
        self._roots.add(location)

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

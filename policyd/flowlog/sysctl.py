"""Reading and writing /proc/sys in the current thread's network namespace."""

from __future__ import annotations


def write_sysctl(path: str, value: str) -> bool:
    """Write /proc/sys/PATH (in the current thread's namespace); False if it is not there."""
    try:
        with open(f"/proc/sys/{path}", "w") as fh:
            fh.write(value)
    except (FileNotFoundError, PermissionError):
        return False
    return True


def read_sysctl(path: str) -> str | None:
    try:
        with open(f"/proc/sys/{path}") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None

"""The installed distribution's version, for every command's `--version`.

It lives in the bottom layer so `zonegate`, `policyd` and `tunneld` read one source
(pyproject.toml, through the installed metadata).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("zonegate")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"

"""Render DOT to SVG or PNG with Graphviz's `dot`, when it is installed."""

from __future__ import annotations

import shutil
import subprocess


class RenderError(RuntimeError):
    """Graphviz is missing or refused the drawing."""


def render(dot_text: str, fmt: str) -> bytes:
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError(
            f"--format {fmt} needs Graphviz: install it (apt install graphviz), or use "
            "--format dot and render elsewhere"
        )
    result = subprocess.run(
        [exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout

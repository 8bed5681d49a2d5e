"""Importing the edge wing loads only what a device needs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("onnx", "torch", "matplotlib", "partitioner", "cloud", "networkx")


def test_import_edge_does_not_load_heavy_modules() -> None:
    code = (
        "import sys, edge; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing edge loaded: {out.stdout.strip()}"


def test_the_check_can_fail() -> None:
    """The same probe sees a heavy module once something imports it."""
    code = "import sys, edge, networkx; " f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "networkx" in out.stdout

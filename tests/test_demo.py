"""`splitpoint demo` runs the whole loop and says every answer matched."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "splitpoint", "demo", "--requests", "8", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout
    for phase in ("worker up", "worker killed", "worker restarted", "recovered"):
        assert phase in table
    assert "NO (" not in table and "OK: every request was answered" in table
    rows = {line.split("  ")[0].strip(): line.split() for line in table.splitlines() if line.startswith("worker ")}
    # worker killed: every request fell back (columns: ... cloud fallbacks match)
    killed = rows["worker killed"]
    assert killed[-3] == "0" and killed[-2] == "8"

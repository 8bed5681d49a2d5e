"""The splitpoint command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from edge import EdgeRuntime
from splitpoint.compare import array_difference


def sp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitpoint", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    out = sp("--help")
    assert out.returncode == 0
    for cmd in ("inspect", "split", "serve", "infer", "demo"):
        assert cmd in out.stdout


def test_infer_through_worker_writes_outputs(demo_bundle, worker, tmp_path, image):
    np.save(tmp_path / "x.npy", image["image"])
    out = sp("infer", str(demo_bundle), "--cloud", worker.address, "--input", str(tmp_path / "x.npy"),
             "--output", str(tmp_path / "y.npz"))
    assert out.returncode == 0, out.stderr
    assert '"path": "cloud"' in out.stdout
    with EdgeRuntime(demo_bundle, split="local") as rt:
        want = rt.infer(image)["logits"]
    with np.load(tmp_path / "y.npz") as y:
        assert array_difference(want, y["logits"]).ok


def test_infer_without_worker_runs_locally(demo_bundle, tmp_path, image):
    np.savez(tmp_path / "x.npz", image=image["image"])
    out = sp("infer", str(demo_bundle), "--input", str(tmp_path / "x.npz"))
    assert out.returncode == 0, out.stderr
    assert '"path": "local"' in out.stdout and "logits: float32 [1, 10]" in out.stdout


def test_errors_are_one_line(demo_bundle, tmp_path):
    cases = [
        ("infer", str(tmp_path / "nope"), "--input", "x.npy"),
        ("infer", str(demo_bundle), "--input", str(tmp_path / "absent.npy")),
        ("infer", str(demo_bundle), "--input", str(demo_bundle / "manifest.json")),
    ]
    for args in cases:
        out = sp(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, out.stderr)

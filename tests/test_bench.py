"""`splitpoint bench`: real worker process, real link proxies, real CPU quota; checks the report, not the timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from testbed.demo import CUT

LINKS = ["200mbit/2ms", "50mbit/6ms"]


@pytest.fixture(scope="module")
def candidates_bundle(demo_model, tmp_path_factory) -> Path:
    """The demo CNN with predicted costs (this machine profiled as edge and cloud), so `adaptive` runs too."""
    from partitioner import split

    out = tmp_path_factory.mktemp("bench") / "democnn"
    split(demo_model, out, at=[CUT], candidates="auto")
    return out


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitpoint", "bench", *args], capture_output=True, text=True,
                          timeout=240)


def test_bench_measures_every_strategy_per_link(candidates_bundle, tmp_path):
    from splitpoint.bundle import Bundle

    out, png = tmp_path / "out.json", tmp_path / "out.png"
    links = [a for link in LINKS for a in ("--link", link)]
    r = _bench(str(candidates_bundle), *links, "--requests", "6", "--warmup", "2", "--edge-cpu", "0.5",
               "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())

    splits = [s for s in Bundle(candidates_bundle).manifest.splits if s.id not in ("local", "cloud")]
    expected = {"local", "cloud", "adaptive", *(f"split:{s.id}" for s in splits)}
    assert [e["link"] for e in result["links"]] == LINKS
    for entry in result["links"]:
        strategies = entry["strategies"]
        assert set(strategies) == expected
        for name, s in strategies.items():
            assert s["requests"] == 6 and s["fallbacks"] == 0, (name, s)
            assert 0 < s["p50_ms"] <= s["p95_ms"], (name, s)
            assert s["edge_cpu_ms"] > 0, (name, s)
        assert strategies["local"]["bytes"] == 0 and strategies["local"]["worker_ms_p50"] is None  # no call made
        assert strategies["cloud"]["worker_ms_p50"] > 0
        # the raw input (49,152 bytes of noise) crosses once per request, compressed a little at most
        assert strategies["cloud"]["bytes"] > 30_000
        fixed = {n: s["p50_ms"] for n, s in strategies.items() if n != "adaptive"}
        assert entry["oracle"] == min(fixed, key=fixed.__getitem__)
        assert sum(strategies["adaptive"]["splits_taken"].values()) == 6

    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["onnxruntime"] and machine["python"]
    assert machine["edge_cpu"] == 0.5 and machine["edge_emulation"] != ""
    assert "bench" in machine["command"] and "--edge-cpu 0.5" in machine["command"]
    assert "oracle" in r.stdout and "over all-local" in r.stdout
    assert "round 6/6" in r.stderr  # progress goes to stderr

    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert float(np.std(pixels[..., :3])) > 0.05  # bars and text, not a blank canvas


def test_bundle_without_costs_has_no_adaptive(demo_bundle, tmp_path):
    out = tmp_path / "out.json"
    r = _bench(str(demo_bundle), "--link", "100mbit/2ms", "--requests", "2", "--warmup", "0", "--edge-cpu", "0",
               "--json", str(out))
    assert r.returncode == 0, r.stderr
    entry = json.loads(out.read_text())["links"][0]
    assert "adaptive" not in entry["strategies"] and {"local", "cloud"} <= set(entry["strategies"])
    assert "no predicted costs" in r.stderr and "--candidates auto" in r.stderr
    assert json.loads(out.read_text())["machine"]["edge_emulation"].startswith("none")


@pytest.mark.parametrize("args, named", [
    (["--link", "fast"], ["--link", "expected BANDWIDTH/RTT"]),
    (["--link", "2mbps/50ms"], ["--link", "unknown bandwidth unit"]),
    (["--codec", "zip"], ["--codec", "unknown codec 'zip'"]),
    (["--worker-threads", "0"], ["--worker-threads 0"]),
    (["--edge-cpu", "-1"], ["--edge-cpu -1"]),
])
def test_bad_flag_is_one_line(demo_bundle, args, named):
    r = _bench(str(demo_bundle), "--link", "20mbit/20ms", *args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and all(n in r.stderr for n in named), r.stderr


def test_missing_bundle_is_one_line(tmp_path):
    r = _bench(str(tmp_path / "nope"), "--link", "20mbit/20ms")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr, r.stderr

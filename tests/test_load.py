"""Load and soak: many concurrent edge clients against one worker, nothing lost, memory flat, p99 bounded.

The engine is benchmarks/soak.py's. In CI it runs ~30 s with 8 clients; the
long soak is opt-in:

    SPLITPOINT_SOAK_MINUTES=10 .venv/bin/python -m pytest tests/test_load.py -m soak

(or ``.venv/bin/python benchmarks/soak.py --minutes 10``, which prints the table
recorded in benchmarks/faults.md).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("splitpoint_soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _soak_module()


def test_eight_edges_for_half_a_minute_lose_nothing_and_keep_the_worker_flat(demo_bundle, worker_factory):
    w = worker_factory(demo_bundle)
    result = soak.run_soak(demo_bundle, w.address, w.proc.pid, clients=8, seconds=28, warmup_s=8, deadline_ms=2000)
    print("\n" + result.table())
    assert result.failures(soak.Criteria(max_growth_mib=32, max_slope_mib_per_min=60, p99_ms=1000)) == []
    assert result.requests >= 200 and result.cloud >= 0.9 * result.requests, result.table()
    assert len(result.rss_after_warmup()) >= 10
    log = w.log_text()
    assert w.proc.poll() is None and "Traceback" not in log and " ERROR " not in log


def test_the_criteria_catch_what_they_promise():
    """A run with a leak, a slow tail, a lost request or an unexplained fallback fails, and says why."""
    good = soak.SoakResult(clients=1, seconds=120, warmup_s=10, latencies_ms=[10.0] * 100, requests=100, cloud=100,
                           rss=[(float(t), 100.0) for t in range(0, 121, 10)])
    criteria = soak.Criteria()
    assert good.failures(criteria) == []
    leaky = soak.SoakResult(**{**vars(good), "rss": [(float(t), 100.0 + t) for t in range(0, 121, 10)]})
    slow = soak.SoakResult(**{**vars(good), "latencies_ms": [10.0] * 98 + [5000.0] * 2})
    lost = soak.SoakResult(**{**vars(good), "errors": ["RpcError(...)"]})
    odd = soak.SoakResult(**{**vars(good), "reasons": soak.Counter({"deadline exceeded": 1, "worker overloaded": 5})})
    for bad, needle in [(leaky, "RSS grew"), (slow, "p99"), (lost, "answered wrong"), (odd, "deadline exceeded")]:
        problems = bad.failures(criteria)
        assert len(problems) == 1 and needle in problems[0], problems
    assert "worker overloaded" not in odd.failures(criteria)[0]


@pytest.mark.soak
@pytest.mark.timeout(float(os.environ.get("SPLITPOINT_SOAK_MINUTES", 0)) * 60 + 900)
@pytest.mark.skipif("SPLITPOINT_SOAK_MINUTES" not in os.environ, reason="opt-in: set SPLITPOINT_SOAK_MINUTES")
def test_soak():
    minutes = os.environ["SPLITPOINT_SOAK_MINUTES"]
    run = subprocess.run([sys.executable, str(SOAK_PATH), "--minutes", minutes], capture_output=True, text=True,
                         timeout=float(minutes) * 60 + 600)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

"""EdgeRuntime against real worker processes: split, fallback, recovery, bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge import EdgeRuntime
from edge.breaker import State
from splitpoint.bundle import Bundle
from splitpoint.compare import difference
from splitpoint.errors import SplitpointError, WireError
from testbed.demo import free_port


@pytest.fixture(scope="module")
def local(demo_bundle):
    with EdgeRuntime(demo_bundle, split="local") as rt:
        yield rt


def _images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(n)]


def test_split_inference_equals_local_and_traces_it(demo_bundle, worker, local, image):
    with EdgeRuntime(demo_bundle, cloud=worker.address) as rt:
        y = rt.infer(image)
        t = rt.last_trace
    assert difference(local.infer(image), y).ok
    sp = Bundle(demo_bundle).manifest.split(t.split)
    assert t.path == "cloud" and t.fallback_reason is None and len(sp.cut) == 2
    assert t.bytes_raw == sum(c.bytes for c in sp.cut) and 0 < t.bytes_encoded < t.bytes_raw  # zstd on post-ReLU
    assert t.cloud_ms > 0 and t.network_ms >= 0 and t.edge_ms > 0 and t.total_ms >= t.edge_ms
    assert rt.counters.cloud == 1 and rt.counters.fallbacks == 0


@pytest.mark.parametrize("split", ["pool.out", "cloud"])
def test_other_splits_of_the_bundle(demo_bundle, worker, local, split):
    ids = [s.id for s in Bundle(demo_bundle).manifest.splits]
    split_id = next(i for i in ids if i.startswith(split))
    with EdgeRuntime(demo_bundle, cloud=worker.address, split=split_id) as rt:
        for x in _images(3):
            assert difference(local.infer(x), rt.infer(x)).ok
            assert rt.last_trace.path == "cloud"


def test_dynamic_batch(demo_bundle, worker, local):
    x = {"image": np.random.default_rng(5).standard_normal((3, 3, 64, 64)).astype(np.float32)}
    with EdgeRuntime(demo_bundle, cloud=worker.address) as rt:
        y = rt.infer(x)
        assert rt.last_trace.path == "cloud" and y["logits"].shape == (3, 10)
    assert difference(local.infer(x), y).ok


def test_unreachable_worker_falls_back_then_opens_circuit(demo_bundle, local):
    address = f"127.0.0.1:{free_port()}"  # nothing listens here
    with EdgeRuntime(demo_bundle, cloud=address, failure_threshold=2) as rt:
        prefix_runs = []
        prefix = rt._segments[rt.split.id].prefix
        run = prefix.run
        prefix.run = lambda feeds: prefix_runs.append(1) or run(feeds)  # count, don't change
        traces = []
        for x in _images(4):
            assert difference(local.infer(x), rt.infer(x)).ok
            traces.append(rt.last_trace)
        assert [t.path for t in traces] == ["fallback"] * 4
        assert [t.fallback_reason for t in traces] == ["worker unavailable"] * 2 + ["circuit open"] * 2
        assert traces[0].attempts == rt.max_attempts  # retried within the budget
        assert traces[3].attempts == 0  # an open circuit costs no call
        assert len(prefix_runs) == 4  # the prefix ran once per request: the suffix continued from its tensors
        assert rt.breaker.state is State.OPEN
        assert rt.counters.fallbacks == 4 and rt.counters.fallback_reasons["circuit open"] == 2


def test_worker_killed_then_restarted_resumes_splitting(demo_bundle, worker_factory, local):
    w = worker_factory(demo_bundle)
    with EdgeRuntime(demo_bundle, cloud=w.address, failure_threshold=1) as rt:
        x = _images(1)[0]
        rt.infer(x)
        assert rt.last_trace.path == "cloud"
        w.kill()
        for x in _images(5, seed=1):
            assert difference(local.infer(x), rt.infer(x)).ok
            assert rt.last_trace.path == "fallback"
        assert rt.breaker.state is State.OPEN
        worker_factory(demo_bundle, port=w.port)  # same address, new process
        deadline = time.monotonic() + 30
        while rt.last_trace.path != "cloud" and time.monotonic() < deadline:
            rt.infer(x)
            time.sleep(0.05)
        assert rt.last_trace.path == "cloud", "the health probe did not bring splitting back"
        assert rt.breaker.state is State.CLOSED


def test_other_model_version_falls_back_with_reason(demo_bundle, worker_factory, tmp_path, local, image):
    """A worker serving the same bundle name cut from another model is refused, not mixed."""
    from partitioner import split
    from testbed.models import save_demo_cnn

    other = save_demo_cnn(tmp_path / "democnn.onnx", seed=42)
    manifest = Bundle(demo_bundle).manifest
    at = [[t.name for t in s.cut] for s in manifest.splits if s.edge_file]
    other_bundle = split(other, tmp_path / "other", at=at, name=manifest.name)
    w = worker_factory(other_bundle.root)
    with EdgeRuntime(demo_bundle, cloud=w.address) as rt:
        y = rt.infer(image)
        assert rt.last_trace.path == "fallback" and rt.last_trace.fallback_reason == "version mismatch"
        assert rt.breaker.state is State.OPEN  # no retrying a worker that cannot heal
        time.sleep(0.5)  # the health probe runs meanwhile: the worker is up, but not with our model version
        assert rt.breaker.state is State.OPEN
        rt.infer(image)
        assert rt.last_trace.fallback_reason == "circuit open" and rt.last_trace.attempts == 0
    assert difference(local.infer(image), y).ok


def test_deadline_exceeded_finishes_locally(demo_bundle, worker, local, image):
    with EdgeRuntime(demo_bundle, cloud=worker.address, deadline_ms=0.001) as rt:
        y = rt.infer(image)
        assert rt.last_trace.path == "fallback" and rt.last_trace.fallback_reason == "deadline exceeded"
    assert difference(local.infer(image), y).ok


def test_per_call_deadline_overrides_default(demo_bundle, worker, image):
    with EdgeRuntime(demo_bundle, cloud=worker.address, deadline_ms=0.001) as rt:
        rt.infer(image, deadline_ms=5000)
        assert rt.last_trace.path == "cloud"


@pytest.mark.parametrize(
    "inputs, needle",
    [
        ({}, "missing ['image']"),
        ({"image": np.zeros((1, 3, 64, 64), np.float32), "extra": np.zeros(1)}, "unexpected ['extra']"),
        ({"image": np.zeros((1, 3, 64, 64), np.float64)}, "'image': expected dtype float32"),
        ({"image": np.zeros((1, 3, 32, 64), np.float32)}, "'image': expected shape [N,3,64,64]"),
    ],
    ids=["missing", "extra", "dtype", "shape"],
)
def test_bad_input_is_one_clear_error(local, inputs, needle):
    with pytest.raises(WireError) as info:
        local.infer(inputs)
    assert needle in str(info.value)


def test_split_needing_a_worker_without_address_is_refused(demo_bundle):
    with pytest.raises(SplitpointError, match="needs a worker"):
        EdgeRuntime(demo_bundle, split="cloud")


def test_unknown_split_lists_known_ones(demo_bundle):
    with pytest.raises(SplitpointError, match="has no split 'nope'.*local"):
        EdgeRuntime(demo_bundle, split="nope")


@pytest.fixture(params=[1000.0])
def priced_bundle(demo_bundle, tmp_path, request):
    """The demo bundle with predicted costs under which pool.out is the split to take (local costs ``param`` ms)."""
    import json
    import shutil

    root = tmp_path / "priced"
    shutil.copytree(demo_bundle, root)
    m = json.loads((root / "manifest.json").read_text())
    for s in m["splits"]:
        sent = sum(t["bytes"] for t in s["cut"])
        s["predicted"] = (
            {"edge_ms": request.param, "local": True} if s["id"] == "local"
            else {"edge_ms": 5.0 if s["id"] == "pool.out" else 50.0, "cloud_ms": 1.0, "local_suffix_ms": 1.0,
                  "sent_bytes": sent, "response_bytes": 40}
        )
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def test_auto_split_moves_to_the_lowest_predicted_split(priced_bundle, worker_factory, local, monkeypatch):
    from edge.speed import SpeedEstimator

    # The fixture's costs are fiction: scaled by the measured speed of this CPU and of the worker, local could
    # win on a fast CPU or beside a slow worker. This test is about following the predictions.
    monkeypatch.setattr(SpeedEstimator, "observe", lambda *_: None)
    w = worker_factory(priced_bundle)
    with EdgeRuntime(priced_bundle, cloud=w.address, split="auto") as rt:
        start = rt.split.id
        assert start == Bundle(priced_bundle).manifest.default_split != "pool.out"
        deadline = time.monotonic() + 10
        while rt.link.estimate().rtt_ms is None and time.monotonic() < deadline:  # the first RTT probe
            time.sleep(0.01)
        splits = []
        for x in _images(6):
            assert difference(local.infer(x), rt.infer(x)).ok
            splits.append((rt.last_trace.split, rt.last_trace.path))
        assert splits[0] == (start, "cloud")  # before any measurement: the bundle's default
        assert splits[-1] == ("pool.out", "cloud") and rt.split.id == "pool.out"
        assert rt.link.estimate().bandwidth_bps is not None


@pytest.mark.parametrize("priced_bundle", [200.0], indirect=True)
def test_auto_split_leaves_a_link_too_slow_for_the_deadline(priced_bundle, worker_factory, local, monkeypatch):
    """Every request times out on a crawling link: the timeouts alone must move the runtime to local."""
    from edge.speed import SpeedEstimator
    from testbed.linkproxy import LinkProxy

    monkeypatch.setattr(SpeedEstimator, "observe", lambda *_: None)  # the fixture's costs are fiction
    w = worker_factory(priced_bundle)
    with LinkProxy(w.address, bandwidth_bps=100e6, delay_ms=2) as link, \
            EdgeRuntime(priced_bundle, cloud=link.address, split="auto", deadline_ms=300, failure_threshold=100) as rt:
        x = _images(1)[0]
        want = local.infer(x)
        for _ in range(10):
            assert difference(want, rt.infer(x)).ok
        assert rt.split.id == "pool.out"
        link.set(bandwidth_bps=50e3)  # pool.out's 60 KB would take ten seconds
        paths = []
        for _ in range(4):
            assert difference(want, rt.infer(x)).ok
            paths.append((rt.last_trace.split, rt.last_trace.path, rt.last_trace.fallback_reason))
        assert paths[0] == ("pool.out", "fallback", "deadline exceeded"), paths
        assert paths[-1] == ("local", "local", None) and rt.link.estimate().bandwidth_bps < 2e6, paths


def test_auto_split_corrects_predictions_with_the_measured_speed(priced_bundle, worker_factory, local):
    """Profiled on a device ~100x slower than this one: a split looks best until the runtime
    measures a prefix, then the scaled prediction says local (a few ms, against a 20 ms round
    trip), and local it goes."""
    import json

    m = json.loads((priced_bundle / "manifest.json").read_text())
    for s in m["splits"]:
        if s["id"] == "pool.out":
            s["predicted"].update(edge_ms=400.0, local_suffix_ms=600.0)
        elif s["id"] != "local":
            s["predicted"].update(edge_ms=900.0, local_suffix_ms=100.0)
    (priced_bundle / "manifest.json").write_text(json.dumps(m))
    from testbed.linkproxy import LinkProxy

    w = worker_factory(priced_bundle)
    with LinkProxy(w.address, delay_ms=10) as link, EdgeRuntime(priced_bundle, cloud=link.address, split="auto") as rt:
        splits = []
        for x in _images(12):
            assert difference(local.infer(x), rt.infer(x)).ok
            splits.append(rt.last_trace.split)
        assert splits[0] != "local" and rt.speed.estimate().edge < 0.2, (splits, rt.speed.estimate())
        assert splits[-1] == "local" and rt.split.id == "local", splits


def test_auto_split_needs_predicted_costs(demo_bundle, worker):
    with pytest.raises(SplitpointError, match="--candidates auto"):
        EdgeRuntime(demo_bundle, cloud=worker.address, split="auto")


@pytest.mark.parametrize("priced_bundle", [200.0], indirect=True)
def test_auto_split_follows_a_link_that_changes(priced_bundle, worker_factory, local, monkeypatch):
    """Fast link: split at pool.out. Slow link: all local within a few requests. Fast again: back."""
    from edge.speed import SpeedEstimator
    from testbed.linkproxy import LinkProxy

    # The fixture's 200 ms for local is fiction (the demo model takes a few ms here): keep the
    # runtime from correcting it with the measured speed, so that this test is about the link.
    monkeypatch.setattr(SpeedEstimator, "observe", lambda *_: None)

    w = worker_factory(priced_bundle)
    with LinkProxy(w.address, bandwidth_bps=100e6, delay_ms=2) as link, \
            EdgeRuntime(priced_bundle, cloud=link.address, split="auto", deadline_ms=5000) as rt:
        x = _images(1)[0]
        want = local.infer(x)

        def run_until(split_id: str, limit: int, every_s: float = 0.0) -> int:
            for n in range(1, limit + 1):
                time.sleep(every_s)
                assert difference(want, rt.infer(x)).ok
                if rt.last_trace.split == split_id and rt.split.id == split_id:
                    return n
            raise AssertionError(f"still on {rt.split.id} after {limit} requests; link {rt.link.estimate()}")

        run_until("pool.out", 10)
        link.set(bandwidth_bps=0.5e6)  # pool.out's 60 KB now take a second: local (200 ms) wins
        assert run_until("local", 4) <= 4
        slow_phase = []
        for _ in range(12):  # a probe is due among these: it goes in the background, nobody waits for it
            assert difference(want, rt.infer(x)).ok
            slow_phase.append((rt.last_trace.path, rt.last_trace.total_ms))
        assert {path for path, _ in slow_phase} == {"local"} and max(ms for _, ms in slow_phase) < 500, slow_phase
        link.set(bandwidth_bps=100e6)
        # A background probe every 5 local requests sees the link came back (once the probe still
        # crawling through the slow link, about a second, is done): requests at 50 per second.
        run_until("pool.out", 150, every_s=0.02)
        assert rt.counters.probes >= 1 and rt.counters.requests == sum(
            getattr(rt.counters, p) for p in ("cloud", "local", "fallbacks"))


def test_auto_split_skips_splits_refused_by_calibration(priced_bundle, worker_factory):
    import json

    m = json.loads((priced_bundle / "manifest.json").read_text())
    for s in m["splits"]:
        if s["id"] == "pool.out":
            s["verification"]["calibration"] = {"offered": False, "top1": 0.5}
    (priced_bundle / "manifest.json").write_text(json.dumps(m))
    w = worker_factory(priced_bundle)
    with EdgeRuntime(priced_bundle, cloud=w.address, split="auto") as rt:
        assert "pool.out" not in rt.policy.candidates and "local" in rt.policy.candidates

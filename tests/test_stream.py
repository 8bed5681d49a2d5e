"""EdgeRuntime.stream: pipelined frames over ModelStreamInfer, in order, none lost."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Gate, circuit_closing, wait_for

from edge import EdgeRuntime
from splitpoint.compare import difference
from splitpoint.errors import WireError
from testbed.demo import free_port


def _frames(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def expected(demo_bundle):
    frames = _frames(30)
    with EdgeRuntime(demo_bundle, split="local") as local:
        return frames, [local.infer(x) for x in frames]


def _check(outputs, want):
    assert len(outputs) == len(want)
    for got, ref in zip(outputs, want):
        assert difference(ref, got).ok


def test_stream_answers_every_frame_in_order_through_the_worker(demo_bundle, worker, expected):
    frames, want = expected
    with EdgeRuntime(demo_bundle, cloud=worker.address) as rt:
        outputs = list(rt.stream(frames, max_in_flight=3))
        assert rt.counters.cloud == len(frames) and rt.counters.fallbacks == 0
        assert rt.last_trace.path == "cloud" and rt.last_trace.cloud_ms > 0
    _check(outputs, want)


def test_worker_killed_mid_stream_loses_and_reorders_nothing(demo_bundle, worker_factory, expected):
    frames, want = expected
    w = worker_factory(demo_bundle)

    def killing(frames):
        for i, x in enumerate(frames):
            if i == 10:
                w.kill()
            yield x

    with EdgeRuntime(demo_bundle, cloud=w.address, failure_threshold=1) as rt:
        outputs = list(rt.stream(killing(frames), max_in_flight=4))
        assert rt.counters.cloud >= 1 and rt.counters.fallbacks >= 1
        assert rt.counters.cloud + rt.counters.fallbacks == len(frames)
    _check(outputs, want)


def test_stream_without_worker_finishes_everything_locally(demo_bundle, expected):
    frames, want = expected
    with EdgeRuntime(demo_bundle, cloud=f"127.0.0.1:{free_port()}") as rt:
        outputs = list(rt.stream(frames[:8]))
        assert rt.counters.fallbacks == 8
    _check(outputs, want[:8])


def test_frame_over_budget_is_finished_locally(demo_bundle, worker_factory, expected, tmp_path):
    """The worker holds every frame (its gate is closed): each frame's budget passes, whatever the CPU's speed."""
    frames, want = expected
    gate = Gate(tmp_path / "closed")
    w = worker_factory(demo_bundle, gate=gate)
    gate.close()
    try:
        with EdgeRuntime(demo_bundle, cloud=w.address, failure_threshold=100) as rt:
            outputs = list(rt.stream(frames[:5], deadline_ms=50))
            assert rt.counters.fallback_reasons["deadline exceeded"] == 5
    finally:
        gate.open()
    _check(outputs, want[:5])


def test_bad_frame_raises_in_its_place(demo_bundle, worker, expected):
    frames, want = expected
    bad = {"image": np.zeros((1, 3, 8, 8), np.float32)}
    with EdgeRuntime(demo_bundle, cloud=worker.address) as rt:
        it = rt.stream([frames[0], frames[1], bad, frames[2]])
        got = [next(it), next(it)]
        with pytest.raises(WireError, match="'image': expected shape"):
            next(it)
    _check(got, want[:2])


def test_local_split_streams_too(demo_bundle, expected):
    frames, want = expected
    with EdgeRuntime(demo_bundle, split="local") as rt:
        _check(list(rt.stream(frames[:4])), want[:4])


def test_stream_resumes_on_the_worker_after_a_restart(demo_bundle, worker_factory):
    w = worker_factory(demo_bundle)
    frames = _frames(200, seed=4)
    with EdgeRuntime(demo_bundle, split="local") as local:
        want = [local.infer(x) for x in frames]
    paths = []

    def flaky(frames):
        import time

        for i, x in enumerate(frames):
            if i == 10:
                w.kill()
            if i == 20:
                worker_factory(demo_bundle, port=w.port)
                wait_for(circuit_closing(rt), what="the health probe to find the restarted worker")
            time.sleep(0.01)
            yield x

    with EdgeRuntime(demo_bundle, cloud=w.address, failure_threshold=1) as rt:
        outputs = []
        for y in rt.stream(flaky(frames), max_in_flight=2):
            outputs.append(y)
            paths.append(rt.last_trace.path)
    _check(outputs, want)
    assert "fallback" in paths[5:40]
    assert paths[-1] == "cloud" and paths[-20:].count("cloud") == 20, paths

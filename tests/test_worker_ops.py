"""Admission queue, deadlines, Prometheus metrics, JSON logs and graceful shutdown.

The worker serves an MLP with one compute slot and two queue places, and is
gated (tests/gated_worker.py): with the gate closed, a request admitted to
the slot holds it until the test opens the gate, however fast the CPU, so the
queue can be arranged around it. Tests synchronise on the worker's own gauges,
scraped from its metrics port, never on how long a computation takes.
Every test of the shared worker runs twice: unbatched, and with dynamic
batching (the slow model has a batch dimension), whose requests must meet the
same bounds.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from conftest import Gate, wait_for
from prometheus_client.parser import text_string_to_metric_families

from splitpoint import wire
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import load_session
from splitpoint.compare import array_difference
from testbed.demo import free_port
from testbed.models import mlp

MODEL = "slow.cloud"
WIDTH, LAYERS = 512, 16
BLOCKER_ROWS = 64


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory) -> Path:
    from partitioner import split

    d = tmp_path_factory.mktemp("slow")
    onnx.save(mlp(WIDTH, LAYERS, reduce_output=True), d / "slow.onnx")  # a small answer
    return split(d / "slow.onnx", d / "bundle", at=[["r7"]], shapes={"x": [2, WIDTH]}).root


def _args(metrics_port: int, *extra: str) -> list[str]:
    return ["--threads", "1", "--max-inflight", "1", "--max-queue", "2", "--metrics-port", str(metrics_port), *extra]


@pytest.fixture(scope="module", params=[False, True], ids=["unbatched", "batched"])
def batched(request) -> bool:
    return request.param


@pytest.fixture(scope="module")
def metrics_port(batched) -> int:
    return free_port()


@pytest.fixture(scope="module")
def gate(tmp_path_factory, batched) -> Gate:
    return Gate(tmp_path_factory.mktemp("gate") / "closed")


@pytest.fixture(scope="module")
def ops_worker(module_worker_factory, slow_bundle, metrics_port, batched, gate):
    batching = ["--max-batch", "16"] if batched else []
    return module_worker_factory(slow_bundle, args=_args(metrics_port, "--log-format", "json", *batching), gate=gate)


@pytest.fixture(scope="module")
def stub(ops_worker):
    channel = grpc.insecure_channel(ops_worker.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _x(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(rows).standard_normal((rows, WIDTH)).astype(np.float32)}


def _infer(stub, rows: int, timeout: float = 60) -> np.ndarray:
    return wire.read_response(stub.ModelInfer(wire.build_request(MODEL, _x(rows))[0].message(), timeout=timeout))["score"]


class Metrics:
    """One scrape of the worker's /metrics, parsed with prometheus_client's own parser."""

    def __init__(self, port: int):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, frozenset(s.labels.items())): s.value for f in self.families.values() for s in f.samples}

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)


@contextmanager
def _blocked(executor: ThreadPoolExecutor, stub, port: int, gate: Gate) -> Iterator[Future]:
    """A request holding the only compute slot, the gate closed on it until the block ends."""
    gate.close()
    try:
        blocker = executor.submit(_infer, stub, BLOCKER_ROWS)
        wait_for(lambda: Metrics(port)("splitpoint_worker_inflight_requests") == 1)
        yield blocker
    finally:
        gate.open()


def test_past_the_queue_bound_requests_are_refused_at_once(ops_worker, stub, metrics_port, batched, gate):
    port = metrics_port
    before = Metrics(port)
    with ThreadPoolExecutor(4) as pool:
        with _blocked(pool, stub, port, gate) as blocker:
            queued = [pool.submit(_infer, stub, 8) for _ in range(2)]
            wait_for(lambda: Metrics(port)("splitpoint_worker_queue_depth") == 2)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as info:
                    _infer(stub, 8, timeout=30)  # refused while the slot is held, not queued until it frees
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in info.value.details()
            assert not blocker.done() and not any(q.done() for q in queued)
        assert blocker.result().shape == (BLOCKER_ROWS,)
        assert all(q.result().shape == (8,) for q in queued)
    after = Metrics(port)
    delta = lambda name, **labels: after(name, **labels) - before(name, **labels)
    assert delta("splitpoint_worker_requests_total", model=MODEL, code="RESOURCE_EXHAUSTED") == 3
    assert delta("splitpoint_worker_requests_total", model=MODEL, code="OK") == 3
    assert delta("splitpoint_worker_queue_duration_seconds_count", model=MODEL) == 3
    assert delta("splitpoint_worker_queue_duration_seconds_sum", model=MODEL) > 0  # the two queued ones waited
    # batched, the two queued requests (16 rows) run as one execution after the blocker
    assert delta("splitpoint_worker_batch_size_count", model=MODEL) == (2 if batched else 3)


def test_requests_whose_deadline_passes_in_the_queue_are_dropped_uncomputed(ops_worker, stub, metrics_port, gate):
    port = metrics_port
    before = Metrics(port)
    with ThreadPoolExecutor(3) as pool:
        with _blocked(pool, stub, port, gate) as blocker:
            # Two wait behind the blocker; batched, the second joins the first's batch and takes it over when the
            # first expires.
            late = [pool.submit(_infer, stub, 8, timeout) for timeout in (2.0, 3.0)]
            wait_for(lambda: Metrics(port)("splitpoint_worker_queue_depth") == 2)  # both were admitted to the queue
            for future in late:
                with pytest.raises(grpc.RpcError) as info:
                    future.result()
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            wait_for(lambda: Metrics(port)("splitpoint_worker_dropped_expired_total", model=MODEL)
                      == before("splitpoint_worker_dropped_expired_total", model=MODEL) + 2)
            # they left the queue while the slot was still taken
            assert not blocker.done() and Metrics(port)("splitpoint_worker_queue_depth") == 0
        blocker.result()
    after = Metrics(port)
    assert after("splitpoint_worker_compute_duration_seconds_count", model=MODEL) - \
        before("splitpoint_worker_compute_duration_seconds_count", model=MODEL) == 1  # the blocker only
    assert after("splitpoint_worker_queue_depth") == 0 and after("splitpoint_worker_inflight_requests") == 0


def test_metrics_count_requests_latency_and_bytes(ops_worker, stub, metrics_port):
    port = metrics_port
    before = Metrics(port)
    zeros = {"x": np.zeros((64, WIDTH), np.float32)}
    framed, encoded = wire.build_request(MODEL, zeros, "zstd")
    request = framed.message()
    for _ in range(2):
        stub.ModelInfer(request)
    for bad in ("../../etc/passwd", "no-such-model"):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(wire.build_request(bad, zeros)[0].message())
    request.inputs[0].datatype = "INT32"
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(request)
    after = Metrics(port)
    delta = lambda name, **labels: after(name, **labels) - before(name, **labels)

    kinds = {name: f.type for name, f in after.families.items()
             if name.startswith("splitpoint_worker_") and not name.endswith("_created")}  # prometheus_client's timestamps
    assert kinds == {
        "splitpoint_worker_requests": "counter",
        "splitpoint_worker_request_duration_seconds": "histogram",
        "splitpoint_worker_queue_duration_seconds": "histogram",
        "splitpoint_worker_compute_duration_seconds": "histogram",
        "splitpoint_worker_batch_size": "histogram",
        "splitpoint_worker_received_bytes": "counter",
        "splitpoint_worker_dropped_expired": "counter",
        "splitpoint_worker_unauthenticated_requests": "counter",
        "splitpoint_worker_queue_depth": "gauge",
        "splitpoint_worker_inflight_requests": "gauge",
    }
    assert delta("splitpoint_worker_requests_total", model=MODEL, code="OK") == 2
    assert delta("splitpoint_worker_requests_total", model=MODEL, code="INVALID_ARGUMENT") == 1
    # client-chosen names never become label values
    assert delta("splitpoint_worker_requests_total", model="_unknown", code="NOT_FOUND") == 2
    assert not any("passwd" in str(labels) for _, labels in after.samples)
    assert delta("splitpoint_worker_request_duration_seconds_count", model=MODEL) == 3
    assert delta("splitpoint_worker_compute_duration_seconds_count", model=MODEL) == 2
    assert delta("splitpoint_worker_batch_size_count", model=MODEL) == 2  # unbatched: one request per execution
    assert delta("splitpoint_worker_batch_size_sum", model=MODEL) == 2
    assert delta("splitpoint_worker_received_bytes_total", model=MODEL, form="raw") == 2 * zeros["x"].nbytes
    assert delta("splitpoint_worker_received_bytes_total", model=MODEL, form="encoded") == 2 * encoded
    assert encoded < zeros["x"].nbytes / 100


GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} ")  # gRPC's C core writes its own lines to stderr


def test_json_logs_are_one_object_per_line(ops_worker):
    lines = [line for line in ops_worker.log_text().splitlines() if line and not GRPC_CORE_LINE.match(line)]
    events = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= e.keys() for e in events)
    start = next(e for e in events if e.get("event") == "listening")
    assert start["address"] == ops_worker.address and start["models"] == [MODEL, "slow.r7"]


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(worker_factory, slow_bundle, tmp_path):
    metrics_port = free_port()
    gate = Gate(tmp_path / "closed")
    w = worker_factory(slow_bundle, args=_args(metrics_port, "--grace-s", "30"), gate=gate)
    want = load_session(slow_bundle / "model.onnx").run(_x(BLOCKER_ROWS))["score"]
    with grpc.insecure_channel(w.address) as channel, ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with _blocked(pool, stub, metrics_port, gate) as blocker:
            w.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "no longer accepting calls" in w.log_text())
            with grpc.insecure_channel(w.address) as fresh, pytest.raises(grpc.RpcError) as info:
                _infer(pb_grpc.GRPCInferenceServiceStub(fresh), 8, timeout=30)
            # no new work once draining: refused, not queued behind the held slot (the code depends on timing)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert not blocker.done()
        assert array_difference(want, blocker.result()).ok
    assert w.proc.wait(timeout=30) == 0
    assert "worker stopped" in w.log_text()


def test_draining_does_not_wait_for_the_grace_period_when_idle(worker_factory, slow_bundle):
    w = worker_factory(slow_bundle, args=["--grace-s", "30"])
    start = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=30) == 0 and time.monotonic() - start < 10

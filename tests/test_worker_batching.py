"""Dynamic batching against real worker processes, with real concurrent gRPC clients.

Batches are observed from outside: the worker's ``splitpoint_worker_batch_size``
histogram, scraped from its metrics port, and each client's answer compared
with the segment run locally on that client's tensors alone. The queue bound
and deadlines under batching are tested in test_worker_ops (its tests run
against a batching worker too).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_worker_ops import Metrics

from splitpoint import wire
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, segment_model_name
from splitpoint.compare import array_difference
from testbed.demo import free_port

CLIENTS = 12


@pytest.fixture(scope="module")
def norm_bundle(tmp_path_factory) -> Path:
    """y = ReduceSumSquare(x, axis 1) with x[N, W]: requests of different widths W cannot be stacked."""
    from partitioner import split

    d = tmp_path_factory.mktemp("norm")
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("ReduceSumSquare", ["a", "axes"], ["y"], keepdims=1)],
        "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, d / "norm.onnx")
    return split(d / "norm.onnx", d / "bundle", at=[["a"]], shapes={"x": [2, 3]}).root


@pytest.fixture(scope="module")
def batching(module_worker_factory, demo_bundle, norm_bundle):
    """A worker batching up to 8 rows with a 20 ms delay and one compute slot; its metrics port."""
    port = free_port()
    w = module_worker_factory(demo_bundle, norm_bundle, args=[
        "--max-batch", "8", "--batch-delay-ms", "20", "--max-inflight", "1", "--threads", "1", "--metrics-port", str(port)])
    return w, port


def _concurrently(address: str, requests: list[tuple[str, dict[str, np.ndarray]]], repeat: int) -> list:
    """Each (model, tensors) from its own client thread, ``repeat`` times; the answers in the same order."""
    start = threading.Barrier(len(requests))

    def client(model: str, tensors: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = wire.build_request(model, tensors, "zstd")[0].message()
            start.wait()
            return [wire.read_response(stub.ModelInfer(request, timeout=30)) for _ in range(repeat)]

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: client(*r), requests))


def _batches(before: Metrics, after: Metrics, model: str) -> tuple[float, float, float]:
    """Executions, requests, and executions of a single request between two scrapes."""
    delta = lambda name, **labels: after(name, model=model, **labels) - before(name, model=model, **labels)
    return (delta("splitpoint_worker_batch_size_count"), delta("splitpoint_worker_batch_size_sum"),
            delta("splitpoint_worker_batch_size_bucket", le="1.0"))


def test_concurrent_clients_share_batches_and_each_gets_exactly_its_own_answer(batching, demo_bundle):
    worker, port = batching
    bundle = Bundle(demo_bundle)
    split = bundle.manifest.split(bundle.manifest.default_split)
    prefix, suffix = load_session(bundle.path(split.edge_file)), load_session(bundle.path(split.cloud_file))
    model = segment_model_name(bundle.name, split.id)
    requests = []
    for seed in range(CLIENTS):  # 1, 2 or 3 rows per request: a batch mixes them
        image = {"image": np.random.default_rng(seed).standard_normal((seed % 3 + 1, 3, 64, 64)).astype(np.float32)}
        available = {**image, **prefix.run(image)}
        requests.append((model, {n: available[n] for n in split.sent_names}))
    before = Metrics(port)
    answers = _concurrently(worker.address, requests, repeat=3)
    after = Metrics(port)
    for (_, tensors), got in zip(requests, answers):
        want = suffix.run(tensors)["logits"]  # this client's tensors alone
        for answer in got:
            assert array_difference(want, answer["logits"]).ok  # batched with others, within the rule
    runs, served, singles = _batches(before, after, model)
    assert served == CLIENTS * 3
    assert runs < served and singles < runs, (runs, served, singles)  # batches of more than one request


def test_requests_of_other_shapes_are_never_stacked(batching, norm_bundle):
    worker, port = batching
    model = segment_model_name(Bundle(norm_bundle).name, "a")
    requests = [(model, {"a": np.random.default_rng(i).standard_normal((1, 3 + i % 2)).astype(np.float32)})
                for i in range(CLIENTS)]
    before = Metrics(port)
    answers = _concurrently(worker.address, requests, repeat=2)
    after = Metrics(port)
    for (_, tensors), got in zip(requests, answers):
        want = np.sum(tensors["a"].astype(np.float32) ** 2, axis=1, keepdims=True)
        for answer in got:
            assert array_difference(want, answer["y"]).ok
    runs, served, singles = _batches(before, after, model)
    assert served == CLIENTS * 2 and singles < runs, (runs, served, singles)


def test_unbatched_models_and_single_clients_run_alone(batching, demo_bundle, image):
    worker, port = batching
    model = segment_model_name(Bundle(demo_bundle).name, "cloud")
    before = Metrics(port)
    with grpc.insecure_channel(worker.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = time.monotonic()
        for _ in range(3):
            stub.ModelInfer(wire.build_request(model, image)[0].message(), timeout=10)
        elapsed = time.monotonic() - start
    runs, served, singles = _batches(before, Metrics(port), model)
    assert runs == served == singles == 3
    assert elapsed > 3 * 0.02  # a lone request waits the batch delay for company: batching's price
    assert "batched up to 8 rows" in worker.log_text()

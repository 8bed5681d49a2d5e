"""TFLite bundles end to end: a real worker process runs the cloud segments, the edge runtime splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge import EdgeRuntime
from partitioner import split
from splitpoint import wire
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle
from testbed import tflite_models as tm

BUILDERS = {"float": tm.float_cnn, "int8": tm.int8_cnn}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite-e2e")
    out = {}
    for kind, build in BUILDERS.items():
        model = tm.save(build(), root / f"{kind}.tflite")
        split(model, root / kind, at=[tm.BLOCK_CUT, [tm.POOL_CUT]])
        out[kind] = root / kind
    return out


@pytest.fixture
def worker(bundles, worker_factory):
    return worker_factory(*bundles.values())


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_split_through_the_worker_equals_the_full_model(kind, bundles, worker):
    x = {tm.INPUT: np.random.default_rng(11).standard_normal((2, 16, 16, 3)).astype(np.float32)}  # dynamic batch
    want = load_session(bundles[kind] / "model.tflite").run(x)[tm.OUTPUT]
    with EdgeRuntime(bundles[kind], cloud=worker.address, deadline_ms=10_000) as rt:
        splits = [s.id for s in rt.bundle.manifest.splits if s.id != "local"]
    for split_id in splits:
        with EdgeRuntime(bundles[kind], cloud=worker.address, split=split_id, deadline_ms=10_000) as rt:
            got = rt.infer(x)[tm.OUTPUT]
            trace = rt.last_trace
        assert (trace.path, trace.fallback_reason) == ("cloud", None), split_id
        np.testing.assert_array_equal(got, want, err_msg=split_id)


def test_int8_cut_tensors_travel_raw_as_int8(bundles, worker):
    bundle = bundles["int8"]
    block = "model_block_conv1_Relu_model_stem_Relu"
    x = {tm.INPUT: np.random.default_rng(12).standard_normal((1, 16, 16, 3)).astype(np.float32)}
    with EdgeRuntime(bundle, cloud=worker.address, split=block, deadline_ms=10_000) as rt:
        rt.infer(x)
        assert rt.last_trace.bytes_raw == 2 * 16 * 16 * 8  # two int8 tensors: one byte per value
    b = Bundle(bundle)
    s = b.manifest.split(block)
    edge = load_session(b.path(s.edge_file)).run(x)
    request, _ = wire.build_request("int8", {n: edge[n] for n in s.sent_names}, b.manifest.codec)
    assert [t.datatype for t in request.header.inputs] == ["INT8", "INT8"]


def test_worker_down_the_edge_answers_from_the_tflite_segments(bundles, tmp_path):
    x = {tm.INPUT: np.random.default_rng(13).standard_normal((1, 16, 16, 3)).astype(np.float32)}
    want = load_session(bundles["int8"] / "model.tflite").run(x)[tm.OUTPUT]
    with EdgeRuntime(bundles["int8"], cloud="127.0.0.1:9", deadline_ms=500, max_attempts=1) as rt:
        got = rt.infer(x)[tm.OUTPUT]
        assert rt.last_trace.path == "fallback"
    np.testing.assert_array_equal(got, want)

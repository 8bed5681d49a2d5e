"""Weights shared between onnxruntime sessions: same answers, each weight held once, no mix-ups."""

from __future__ import annotations

import numpy as np
import pytest

from edge import EdgeRuntime
from splitpoint.backends import SharedWeights, load_session
from splitpoint.bundle import Bundle
from splitpoint.compare import difference
from splitpoint.errors import SplitpointError
from testbed.demo import free_port
from testbed.models import save_demo_cnn


def _image(seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).standard_normal((2, 3, 64, 64)).astype(np.float32)}


def test_every_segment_answers_the_same_with_shared_weights(demo_bundle):
    """Full model, each prefix and each suffix: shared sessions equal sessions with their own weights."""
    b = Bundle(demo_bundle)
    shared, alone = SharedWeights(), SharedWeights()
    x = _image()
    load_session(b.model_path(), shared=alone)
    assert difference(load_session(b.model_path()).run(x), load_session(b.model_path(), shared=shared).run(x)).ok
    for s in b.manifest.splits:
        if not (s.edge_file and s.cloud_file):
            continue
        prefix, suffix = b.path(s.edge_file), b.path(s.cloud_file)
        cut = load_session(prefix).run(x)
        assert difference(cut, load_session(prefix, shared=shared).run(x)).ok, s.id
        assert difference(load_session(suffix).run(cut), load_session(suffix, shared=shared).run(cut)).ok, s.id
    assert alone.distinct == alone.references > 0
    assert shared.distinct == alone.distinct < shared.references  # the segments reuse the full model's weights


def test_same_names_with_other_values_are_not_mixed_up(tmp_path):
    """Two versions of one model: same initializer names, other bytes: each keeps its own weights."""
    a, b = save_demo_cnn(tmp_path / "a.onnx", seed=0), save_demo_cnn(tmp_path / "b.onnx", seed=42)
    shared = SharedWeights()
    shared_a, shared_b = load_session(a, shared=shared), load_session(b, shared=shared)
    x = _image()
    assert difference(load_session(a).run(x), shared_a.run(x)).ok
    assert difference(load_session(b).run(x), shared_b.run(x)).ok
    assert not difference(shared_a.run(x), shared_b.run(x)).ok
    assert shared.references // 2 < shared.distinct < shared.references  # only equal bytes (a shape constant) are shared


def test_runtime_with_and_without_sharing_answers_alike(demo_bundle):
    """The worker is unreachable: prefix and local suffix both run here, with shared or own weights."""
    cloud = f"127.0.0.1:{free_port()}"
    x = _image(3)
    with EdgeRuntime(demo_bundle, cloud=cloud, share_weights=False) as own, \
            EdgeRuntime(demo_bundle, cloud=cloud) as shared:
        assert own.shared_weights is None and shared.shared_weights is not None
        assert difference(own.infer(x), shared.infer(x)).ok
        assert own.last_trace.path == shared.last_trace.path == "fallback"
    with EdgeRuntime(demo_bundle, split="local") as local:
        assert local.shared_weights is None  # one session: nothing to share


def test_a_missing_file_is_still_one_clear_error(tmp_path):
    with pytest.raises(SplitpointError, match="missing.onnx: onnxruntime cannot load it"):
        load_session(tmp_path / "missing.onnx", shared=SharedWeights())

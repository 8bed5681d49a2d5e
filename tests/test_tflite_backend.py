"""The LiteRT backend and the test .tflite models it runs: real interpreters, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from splitpoint.backends import LITERT_EXTRA, load_session
from splitpoint.compare import array_difference
from splitpoint.errors import SplitpointError
from testbed import tflite_models as tm


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite")
    return {
        "float": tm.save(tm.float_cnn(), root / "float.tflite"),
        "int8": tm.save(tm.int8_cnn(), root / "int8.tflite"),
        "while": tm.save(tm.while_model(), root / "while.tflite"),
        "custom": tm.save(tm.custom_op_model(), root / "custom.tflite"),
    }


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16, 16, 3)).astype(np.float32)


def test_tflite_files_open_in_litert_with_manifest_specs(models):
    s = load_session(models["int8"])
    assert s.backend == "litert"
    assert [(t.name, t.dtype, t.shape) for t in s.inputs] == [(tm.INPUT, "float32", (None, 16, 16, 3))]
    assert [(t.name, t.dtype, t.shape) for t in s.outputs] == [(tm.OUTPUT, "float32", (None, 10))]


def test_float_cnn_matches_the_numpy_reference(models):
    s = load_session(models["float"], threads=2)
    x = images(1)
    y = s.run({tm.INPUT: x})[tm.OUTPUT]
    assert y.dtype == np.float32 and y.shape == (1, 10)
    assert array_difference(tm.reference(x), y).ok


def test_dynamic_batch_resizes_and_back(models):
    s = load_session(models["float"])
    for n in (3, 1, 2):
        x = images(n, seed=n)
        assert array_difference(tm.reference(x), s.run({tm.INPUT: x})[tm.OUTPUT]).ok


def test_int8_cnn_approximates_the_float_model(models):
    x = images(4, seed=7)
    y = load_session(models["int8"]).run({tm.INPUT: x})[tm.OUTPUT]
    ref = tm.reference(x)
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()
    assert (y.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.75


def test_while_model_runs_its_loop(models):
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(load_session(models["while"]).run({"x": x})["out"], 9 * (x + 1))


def test_concurrent_calls_take_turns(models):
    """The worker calls one session from several threads; each call must get its own answer."""
    s = load_session(models["float"])
    xs = [images(1 + k % 3, seed=k) for k in range(12)]
    with ThreadPoolExecutor(4) as pool:
        ys = list(pool.map(lambda x: s.run({tm.INPUT: x})[tm.OUTPUT], xs))
    for x, y in zip(xs, ys):
        assert array_difference(tm.reference(x), y).ok


def test_errors_name_the_file_and_the_problem(models, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    cases = [
        (lambda: load_session(bad), "bad.tflite: LiteRT cannot load it"),
        (lambda: load_session(models["custom"]), "unresolved custom op: SplitpointTestOp"),
        (lambda: load_session(models["float"]).run({}), f"missing input tensor(s) ['{tm.INPUT}']"),
        (lambda: load_session(models["float"], backend="tensorrt"), "backend 'tensorrt' is not available"),
        (lambda: load_session(models["float"]).run({tm.INPUT: images(1).astype(np.float64)}), "LiteRT failed: Cannot set"),
    ]
    for call, message in cases:
        with pytest.raises(SplitpointError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)


def test_a_failed_resize_does_not_break_later_calls(models):
    s = load_session(models["float"])
    with pytest.raises(SplitpointError, match="LiteRT failed"):
        s.run({tm.INPUT: np.zeros((1, 16, 16), np.float32)})  # rank 3 where the convs need 4
    x = images(1)
    assert array_difference(tm.reference(x), s.run({tm.INPUT: x})[tm.OUTPUT]).ok


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_without_litert_the_error_names_the_extra(models):
    blocked = "import sys; sys.modules['ai_edge_litert'] = sys.modules['tflite_runtime'] = None\n"
    out = _python(blocked + f"from splitpoint.backends import load_session\nload_session({str(models['float'])!r})")
    assert out.returncode != 0
    assert LITERT_EXTRA in out.stderr.strip().splitlines()[-1]


def test_litert_is_imported_only_for_tflite(models):
    """Neither the edge nor the ONNX partitioner needs LiteRT; a .tflite model loads it, and no onnxruntime."""
    loaded = "print(','.join(m for m in ('ai_edge_litert', 'onnxruntime') if m in sys.modules) or '-')\n"
    out = _python(
        "import sys, edge, numpy as np\n" + loaded +
        "from splitpoint.backends import load_session\n"
        f"s = load_session({str(models['float'])!r})\n"
        "s.run({s.inputs[0].name: np.zeros((1, 16, 16, 3), np.float32)})\n" + loaded
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["-", "ai_edge_litert"]
    out = _python("import sys, partitioner\nprint('ai_edge_litert' in sys.modules)")
    assert (out.returncode, out.stdout.strip()) == (0, "False"), out.stderr

"""`splitpoint bench-backends`: one model on every runtime, a row each, outputs cross-checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitpoint.cli import main

pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")

TWIN = Path(__file__).resolve().parent.parent / "benchmarks" / "backends_twin.py"


def test_one_model_on_three_backends_prints_a_row_each(tmp_path, capsys):
    from testbed import tflite_models

    tflite = tflite_models.save(tflite_models.float_cnn(size=16), tmp_path / "cnn.tflite")
    code = main(["bench-backends", f"{TWIN}:tflite_cnn_twin", str(tflite), "--shape", "image=1,16,16,3",
                 "--rounds", "2", "--runs", "3", "--warmup", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    header, _, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["backend", "model", "load", "ms"]
    by_backend = {r.split()[0]: r.split() for r in rows}
    assert list(by_backend) == ["onnxruntime", "torch", "litert"]
    assert by_backend["onnxruntime"][1] == "backends_twin.tflite_cnn_twin.onnx"
    assert by_backend["litert"][1] == "cnn.tflite"
    for backend in ("torch", "litert"):  # the same computation as the first row's, within the tolerance
        assert by_backend[backend][-1] == "yes" and float(by_backend[backend][-2]) < 1e-3, rows
    assert by_backend["onnxruntime"][-2:] == ["reference", "-"]
    for r in by_backend.values():
        p50, p95, peak = (float(v) for v in r[-6:-3])  # counted from the end: "(exported)" may follow a name
        assert 0 < p50 <= p95 and peak > 0


@pytest.mark.parametrize(
    "model, needle",
    [("model.bin", "model.bin: give a .onnx, .tflite or .pt file, or module.py:factory"),
     ("missing.onnx", "missing.onnx: no such file"),
     ("nowhere.py:make", "nowhere.py: no such file")],
)
def test_bad_model_arguments_are_one_clear_error(tmp_path, capsys, model, needle):
    assert main(["bench-backends", str(tmp_path / model)]) == 2
    assert needle in capsys.readouterr().err

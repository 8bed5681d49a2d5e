"""One model on onnxruntime, TorchScript and LiteRT: the `splitpoint bench-backends` table, recorded.

The model is the test CNN of ``testbed.tflite_models`` (stem conv, residual
block, pooling, head conv, fully connected; NHWC) as a .tflite flatbuffer, and
its torch twin (``benchmarks/backends_twin.py``, same weights), which
bench-backends exports to ONNX and TorchScript. Equivalent command, with
MODEL.tflite written by ``testbed.tflite_models.save(float_cnn(SIZE), ...)``:

    splitpoint bench-backends benchmarks/backends_twin.py:tflite_cnn_twin MODEL.tflite --shape image=1,SIZE,SIZE,3

    .venv/bin/python benchmarks/backends_bench.py [--size 224] [--rounds 5] [--out benchmarks/backends.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from edge.bench import bench, format_table
from testbed import tflite_models

TWIN = Path(__file__).resolve().parent / "backends_twin.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tflite = tflite_models.save(tflite_models.float_cnn(size=args.size), Path(tmp) / f"cnn{args.size}.tflite")
        results = bench([f"{TWIN}:tflite_cnn_twin", str(tflite)], {"image": [1, args.size, args.size, 3]},
                        threads=args.threads, runs=args.runs, rounds=args.rounds)
    import onnxruntime
    import torch

    command = (f".venv/bin/python benchmarks/backends_bench.py --size {args.size} --threads {args.threads} "
               f"--rounds {args.rounds} --runs {args.runs}" + (f" --out {args.out}" if args.out else ""))
    text = "\n".join([
        "# Backends on this device: onnxruntime, TorchScript, LiteRT",
        "",
        f"```\ncd /work/main && {command}\n```",
        "",
        f"Model: the test CNN of `testbed.tflite_models` at {args.size}x{args.size} (NHWC, float32; 8 and 16 "
        "channels, so little compute per pixel): the .tflite flatbuffer on LiteRT, and its torch twin "
        "exported to ONNX (onnxruntime) and traced to TorchScript (torch). Each backend in its own "
        f"process, {args.threads} thread(s), {args.rounds} interleaved rounds of {args.runs} timed calls "
        "after 5 warm-up calls; p50/p95 over all timed calls. *peak MB* is the process's ru_maxrss (python, "
        "numpy, the engine and the model); *model MB* is the resident memory that loading and running the model "
        "added once the engine was imported. *max_rel* compares outputs with the first row's on the same input "
        "(the largest difference relative to the output's magnitude); *agrees* says whether that is within "
        "splitpoint.compare's tolerance for two correct runtimes.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs (shared VM; other work ran "
        f"meanwhile), Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, torch "
        f"{torch.__version__}.",
        "",
        "```",
        format_table(results),
        "```",
        "",
    ])
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

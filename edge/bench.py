"""``splitpoint bench-backends``: one model on each runtime of this device, side by side.

Each backend runs in its own process, so its peak memory (``ru_maxrss``)
is its own: the interpreter, the engine's import, the loaded model and its
working memory; "model MB" is the resident memory the model added once the
engine was imported (Linux: /proc/self/statm).
The processes take turns: every round runs each backend ``runs`` times, so
drift of a shared machine hits them alike; latencies are pooled over rounds.
Inputs are generated once and fed to every backend by position (formats name
them differently) and the outputs are compared with the first backend's, so
the table is about the same computation: "max_rel" is the largest difference
relative to the output's magnitude, "agrees" whether it is within
``splitpoint.compare``'s tolerance for two correct runtimes.

A model is a file (``.onnx``: onnxruntime, ``.tflite``: LiteRT, ``.pt``:
TorchScript with splitpoint specs, see ``save_torchscript``) or
``module.py:factory``, a function returning a torch module: it is exported to
ONNX and traced to TorchScript in a separate process, and both are measured.

This module is for the command line: ``import edge`` does not load it.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitpoint import dtypes
from splitpoint.backends import load_session
from splitpoint.compare import Difference, difference
from splitpoint.errors import SplitpointError

_BACKEND_OF = {".onnx": "onnxruntime", ".tflite": "litert", ".pt": "torch"}


@dataclass
class Result:
    backend: str
    model: str
    load_ms: float
    latencies_ms: list[float]
    import_mb: float  # resident memory once the engine was imported, before loading
    resident_mb: float  # resident memory after loading and all the runs
    peak_mb: float  # the process's high-water mark (ru_maxrss)
    agreement: Difference | None = None  # with the first backend's outputs

    def row(self) -> list[str]:
        lat = np.array(self.latencies_ms)
        d = self.agreement
        diff = ["reference", "-"] if d is None else [f"{d.max_rel:.2g}", "yes" if d.ok else "NO"]
        return [self.backend, self.model, f"{self.load_ms:.0f}", f"{np.percentile(lat, 50):.2f}",
                f"{np.percentile(lat, 95):.2f}", f"{self.peak_mb:.0f}", f"{self.resident_mb - self.import_mb:.0f}", *diff]


HEADER = ["backend", "model", "load ms", "p50 ms", "p95 ms", "peak MB", "model MB", "max_rel", "agrees"]
_ENGINES = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert.interpreter", "torch": "torch"}


def targets(models: Sequence[str], shapes: Mapping[str, Sequence[int]], workdir: Path) -> list[tuple[str, Path]]:
    """(backend, file) for each model argument; ``module.py:factory`` becomes an ONNX and a TorchScript file."""
    out: list[tuple[str, Path]] = []
    for m in models:
        file, sep, factory = m.rpartition(":")
        if sep and file.endswith(".py"):
            out += _export(Path(file), factory, shapes, workdir)
            continue
        path = Path(m)
        if path.suffix not in _BACKEND_OF:
            raise SplitpointError(f"{m}: give a .onnx, .tflite or .pt file, or module.py:factory")
        if not path.is_file():
            raise SplitpointError(f"{m}: no such file")
        out.append((_BACKEND_OF[path.suffix], path))
    return out


def _export(module_file: Path, factory: str, shapes: Mapping[str, Sequence[int]], workdir: Path) -> list[tuple[str, Path]]:
    """Export a torch module to ONNX and TorchScript in another process (torch in-process slows onnxruntime)."""
    if not module_file.is_file():
        raise SplitpointError(f"{module_file}: no such file")
    out = subprocess.run(
        [sys.executable, "-m", "edge.bench", "export", str(module_file), factory, str(workdir), json.dumps(dict(shapes))],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        raise SplitpointError(f"{module_file}:{factory}: export failed: {lines[-1] if lines else out.returncode}")
    return [(backend, _exported(workdir, module_file, factory, suffix)) for backend, suffix in _EXPORTS]


_EXPORTS = [("onnxruntime", ".onnx"), ("torch", ".pt")]


def _exported(workdir: str | Path, module_file: str | Path, factory: str, suffix: str) -> Path:
    return Path(workdir) / f"{Path(module_file).stem}.{factory}{suffix}"


def _export_child(module_file: str, factory: str, workdir: str, shapes_json: str) -> None:
    import importlib.util
    import inspect

    import torch

    from splitpoint.backends import save_torchscript
    from splitpoint.bundle import TensorSpec

    spec = importlib.util.spec_from_file_location(Path(module_file).stem, module_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {module_file}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    module = getattr(mod, factory)().eval()
    names = list(inspect.signature(module.forward).parameters)
    shapes = json.loads(shapes_json)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise SystemExit(f"give --shape for the module's input(s) {missing} (NAME=D0,D1,...)")
    args = tuple(torch.randn(*shapes[n]) for n in names)
    with torch.no_grad():
        traced = torch.jit.trace(module, args)
        result = traced(*args)
    values = list(result) if isinstance(result, tuple | list) else [result]
    outputs = [f"output_{i}" for i in range(len(values))]
    save_torchscript(
        traced, _exported(workdir, module_file, factory, ".pt"),
        [TensorSpec(n, "float32", tuple(shapes[n])) for n in names],
        [TensorSpec(o, dtypes.dtype_name(v.numpy().dtype), tuple(v.shape)) for o, v in zip(outputs, values)],
    )
    onnx_path = _exported(workdir, module_file, factory, ".onnx")
    torch.onnx.export(module, args, str(onnx_path), input_names=names, output_names=outputs, dynamo=False)


def _inputs(backend: str, path: Path, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> list[np.ndarray]:
    """Random inputs for the first model's specs; dynamic dimensions from ``shapes`` (default 1)."""
    session = load_session(path, backend=backend)
    rng = np.random.default_rng(seed)
    arrays = []
    for s in session.inputs:
        dims = shapes.get(s.name) or [d if isinstance(d, int) else 1 for d in s.shape]
        dtype = dtypes.numpy_dtype(s.dtype)
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(dims).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.random(dims) < 0.5)
        else:
            arrays.append(rng.integers(0, 10, dims).astype(dtype))
    return arrays


class _Child:
    """One backend in its own process, driven over its stdin and stdout."""

    def __init__(self, backend: str, path: Path, threads: int, inputs_file: Path, outputs_file: Path):
        self.backend, self.path = backend, path
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edge.bench", "child", backend, str(path), str(threads), str(inputs_file),
             str(outputs_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self._proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            err = [x for x in self._proc.stderr.read().splitlines() if x.strip()]  # type: ignore[union-attr]
            raise SplitpointError(f"{self.backend} on {self.path}: {err[-1] if err else 'the process died'}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self._proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


def _child(backend: str, path: str, threads: str, inputs_file: str, outputs_file: str) -> None:
    """Load, then answer ``run N`` with N latencies and ``stop`` with the outputs written and memory."""

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20

    def say(d: dict) -> None:
        print(json.dumps(d), flush=True)

    try:
        try:
            importlib.import_module(_ENGINES[backend])  # the engine's own memory is not the model's
        except ImportError:
            pass  # load_session says what to install
        import_mb = resident_mb()
        t = time.perf_counter()
        session = load_session(path, backend=backend, threads=int(threads))
        load_ms = (time.perf_counter() - t) * 1e3
        with np.load(inputs_file) as data:
            arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        if len(arrays) != len(session.inputs):
            raise SplitpointError(f"{path} takes {len(session.inputs)} input(s), the first model {len(arrays)}")
        feeds = {s.name: a for s, a in zip(session.inputs, arrays)}
        outputs = session.run(feeds)
    except SplitpointError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    say({"load_ms": load_ms, "import_mb": import_mb})
    for line in sys.stdin:
        command, *arg = line.split()
        if command == "run":
            times = []
            for _ in range(int(arg[0])):
                t = time.perf_counter()
                session.run(feeds)
                times.append((time.perf_counter() - t) * 1e3)
            say({"ms": times})
        else:
            np.savez(outputs_file, *[outputs[o.name] for o in session.outputs])
            say({"resident_mb": resident_mb(), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            return


def bench(
    models: Sequence[str], shapes: Mapping[str, Sequence[int]], threads: int = 1, runs: int = 20, rounds: int = 5,
    warmup: int = 5,
) -> list[Result]:
    """Measure each backend for ``models``; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="splitpoint-bench-") as tmp:
        work = Path(tmp)
        found = targets(models, shapes, work)
        inputs_file = work / "inputs.npz"
        np.savez(inputs_file, *_inputs(*found[0], shapes))
        children: list[_Child] = []
        try:
            for i, (backend, path) in enumerate(found):  # one at a time: loads do not compete
                children.append(_Child(backend, path, threads, inputs_file, work / f"outputs{i}.npz"))
                children[-1].ask(f"run {warmup}")
            latencies: list[list[float]] = [[] for _ in children]
            for _ in range(rounds):
                for c, lat in zip(children, latencies):
                    lat += c.ask(f"run {runs}")["ms"]
            memory = [c.ask("stop") for c in children]
        finally:
            for c in children:
                c.kill()
        results = []
        for i, (c, lat, mem) in enumerate(zip(children, latencies, memory)):
            shown = c.path.name if c.path.parent != work else f"{c.path.name} (exported)"
            results.append(Result(c.backend, shown, c.ready["load_ms"], lat, c.ready["import_mb"], mem["resident_mb"],
                                  mem["peak_mb"],
                                  None if i == 0 else _agreement(work / "outputs0.npz", work / f"outputs{i}.npz")))
        return results


def _agreement(reference: Path, other: Path) -> Difference:
    """The outputs of ``other`` against ``reference``, by position, under ``splitpoint.compare``'s rule."""
    with np.load(reference) as a, np.load(other) as b:
        return difference(dict(a.items()), dict(b.items()))


def format_table(results: Sequence[Result]) -> str:
    rows = [HEADER, *(r.row() for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *(line(r) for r in rows[1:])])


if __name__ == "__main__":
    {"child": _child, "export": _export_child}[sys.argv[1]](*sys.argv[2:])

"""Profiles: measured per-node latency of one model on one machine, backend and thread count.

A profile is a JSON file (format below) so it can be measured on the device and
on the server and carried to wherever plans are made. It is keyed by node
(``"<index>:<name>"``: ONNX node names may be empty or repeated) and records the
model file's sha256 and the input shapes, so it is never applied to another
model or another input size.

It also says how far to trust it: ``end_to_end_ms`` is the median of timed
``session.run`` calls without the profiler, ``call_overhead_ms`` the median
call on a one-node model (the fixed cost of any call), and the node times'
sum is compared with the end-to-end time. A segment of the model is predicted
as one call: ``call_overhead_ms`` plus its nodes' times, scaled so that the
whole model's nodes add up to the measured end-to-end time (the profiler sees
kernels, not the gaps between them), plus the boundary: what cutting the model
there costs beyond its nodes, per byte crossing (``Boundary``, fitted on real
segments of this model while profiling, see ``partitioner.profile_boundary``).

Each backend measures node times its own way, into this one format:
onnxruntime with its node profiler (``partitioner.ort_trace``), LiteRT from
timed prefix models (``partitioner.profile_litert``: its Python API has no op
profiler), PyTorch with ``torch.profiler`` per module, mapped onto the nodes of
the module's ONNX export (``partitioner.profile_torch``).

    {"format": "splitpoint-profile", "version": 1,
     "model": {"file", "sha256", "compute_nodes"},
     "backend": {"name", "version", "threads", "graph_optimization", "provider"},
     "machine": {"platform", "processor", "cpu_count", "python"},
     "shapes": {input: [dims]}, "runs", "warmup", "measured_at",
     "end_to_end_ms",
     "quality": {"node_sum_ms", "call_overhead_ms", "unattributed_ms", "node_sum_vs_end_to_end"},
     "boundary": {"out_ms_per_mb", "in_ms_per_mb", "cuts": [{"sent", "mb", "prefix_ms", "prefix_predicted_ms",
                                                            "suffix_ms", "suffix_predicted_ms"}]},
     "nodes": {"<index>:<name>": {"index", "name", "op_type", "ms",
                                  "kernels": [...] | "fused_into": key | "removed": true}}}

"boundary" is optional: a profile without it (or an older one) predicts no boundary cost.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from partitioner import onnxio, ort_trace
from partitioner.errors import PartitionError
from partitioner.formats import ModelSource, OnnxFormat, format_of
from partitioner.profile_boundary import Boundary, BoundaryProbe
from partitioner.profile_timing import Timed, gc_paused, ort_opener
from partitioner.pytorch import export_factory, is_factory
from partitioner.source import Source
from splitpoint.bundle import file_sha256

FORMAT = "splitpoint-profile"
VERSION = 1
BACKENDS = ("onnxruntime", "litert", "torch")
_OVERHEAD_CALLS = 10  # one-node calls per profiled run


@dataclass(frozen=True)
class NodeProfile:
    index: int
    name: str
    op_type: str
    ms: float
    kernels: tuple[str, ...] = ()
    fused_into: str | None = None
    removed: bool = False

    @property
    def key(self) -> str:
        return node_key(self.index, self.name)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "name": self.name, "op_type": self.op_type, "ms": round(self.ms, 6)}
        if self.kernels:
            d["kernels"] = list(self.kernels)
        if self.fused_into is not None:
            d["fused_into"] = self.fused_into
        if self.removed:
            d["removed"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NodeProfile:
        return cls(int(d["index"]), str(d["name"]), str(d["op_type"]), float(d["ms"]), tuple(d.get("kernels", ())),
                   d.get("fused_into"), bool(d.get("removed", False)))


def node_key(index: int, name: str) -> str:
    """The stable key of a node: its position in ``graph.node`` and its (possibly empty) name."""
    return f"{index}:{name}"


@dataclass(frozen=True)
class Profile:
    model_file: str
    model_sha256: str
    backend: dict[str, Any]
    machine: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    runs: int
    warmup: int
    measured_at: str
    end_to_end_ms: float
    call_overhead_ms: float
    unattributed_ms: float
    nodes: dict[int, NodeProfile]  # by node index
    path: Path | None = None  # the file it was read from, for messages
    boundary: Boundary = Boundary()

    @property
    def threads(self) -> int:
        return int(self.backend["threads"])

    @property
    def node_sum_ms(self) -> float:
        return sum(n.ms for n in self.nodes.values())

    @property
    def label(self) -> str:
        """How messages name this profile: its file, or what it measured."""
        return str(self.path) if self.path else f"the {self.backend['name']} profile ({self.threads} thread(s))"

    @property
    def scale(self) -> float:
        """Node times times this add up to the measured end-to-end time minus the call overhead."""
        compute = self.end_to_end_ms - self.call_overhead_ms
        return compute / self.node_sum_ms if self.node_sum_ms > 0 and compute > 0 else 1.0

    def node_ms(self, index: int) -> float:
        """A node's share of a call, scaled (see ``scale``)."""
        return self.nodes[index].ms * self.scale

    def segment_ms(self, nodes: Iterable[int]) -> float:
        """Predicted latency of one call running ``nodes`` (0 for no nodes: no call is made)."""
        nodes = list(nodes)
        return self.call_overhead_ms + sum(self.node_ms(i) for i in nodes) if nodes else 0.0

    def prefix_ms(self, nodes: Iterable[int], sent_bytes: int) -> float:
        """A prefix that outputs ``sent_bytes`` for a suffix: the call plus the boundary's out side."""
        nodes = list(nodes)
        return self.segment_ms(nodes) + self.boundary.out_ms_per_mb * sent_bytes / 1e6 if nodes else 0.0

    def suffix_ms(self, nodes: Iterable[int], received_bytes: int) -> float:
        """A suffix that starts from ``received_bytes`` a prefix made: the call plus the boundary's in side."""
        nodes = list(nodes)
        return self.segment_ms(nodes) + self.boundary.in_ms_per_mb * received_bytes / 1e6 if nodes else 0.0

    def summary(self) -> str:
        b, m = self.backend, self.machine
        share = self.node_sum_ms / self.end_to_end_ms if self.end_to_end_ms else 0.0
        boundary = self.boundary
        measured = f", boundary {boundary.out_ms_per_mb:.3f} out + {boundary.in_ms_per_mb:.3f} in ms/MB" if boundary.cuts else ""
        return (
            f"{b['name']} {b['version']}, {b['threads']} thread(s), {m['processor']} x{m['cpu_count']}: "
            f"end-to-end {self.end_to_end_ms:.3f} ms, nodes sum to {share:.0%} of it, "
            f"call overhead {self.call_overhead_ms:.3f} ms{measured}"
        )

    def check(self, model_sha256: str, shapes: Mapping[str, Sequence[int]], compute_nodes: Iterable[int]) -> None:
        """Refuse a profile measured on another model, other input shapes or another node list."""
        if self.model_sha256 != model_sha256:
            raise PartitionError(
                f"profile {self.label} was measured on model sha256 {self.model_sha256[:12]}.., "
                f"not this model ({model_sha256[:12]}..)"
            )
        wanted = {k: tuple(v) for k, v in shapes.items()}
        if self.shapes != wanted:
            raise PartitionError(
                f"profile {self.label} was measured with input shapes {_shapes_text(self.shapes)}, "
                f"not {_shapes_text(wanted)}; profile again with --shape"
            )
        missing = sorted(set(compute_nodes) - set(self.nodes))
        if missing:
            raise PartitionError(f"profile {self.label} has no time for node {missing[0]} of this model; profile it again")

    def to_json(self) -> dict[str, Any]:
        nodes = {n.key: n.to_json() for n in self.nodes.values()}
        end_to_end = round(self.end_to_end_ms, 6)
        node_sum = round(sum(n["ms"] for n in nodes.values()), 6)
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": {"file": self.model_file, "sha256": self.model_sha256, "compute_nodes": len(self.nodes)},
            "backend": self.backend,
            "machine": self.machine,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "runs": self.runs,
            "warmup": self.warmup,
            "measured_at": self.measured_at,
            "end_to_end_ms": end_to_end,
            "quality": {  # from the values as stored, so that saving a loaded profile writes the same file
                "node_sum_ms": node_sum,
                "call_overhead_ms": round(self.call_overhead_ms, 6),
                "unattributed_ms": round(self.unattributed_ms, 6),
                "node_sum_vs_end_to_end": round(node_sum / end_to_end, 4) if end_to_end else None,
            },
            "boundary": self.boundary.to_json(),
            "nodes": nodes,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise PartitionError(f"profile {path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PartitionError(f"profile {path}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PartitionError(f"profile {path}: not a splitpoint profile (write one with `splitpoint profile`)")
        if d.get("version") != VERSION:
            raise PartitionError(
                f"profile {path}: version {d.get('version')!r} is not supported (this splitpoint reads {VERSION})"
            )
        try:
            nodes = [NodeProfile.from_json(n) for n in d["nodes"].values()]
            q = d["quality"]
            return cls(
                model_file=d["model"]["file"],
                model_sha256=d["model"]["sha256"],
                backend=dict(d["backend"]),
                machine=dict(d["machine"]),
                shapes={k: tuple(v) for k, v in d["shapes"].items()},
                runs=int(d["runs"]),
                warmup=int(d["warmup"]),
                measured_at=str(d["measured_at"]),
                end_to_end_ms=float(d["end_to_end_ms"]),
                call_overhead_ms=float(q["call_overhead_ms"]),
                unattributed_ms=float(q["unattributed_ms"]),
                nodes={n.index: n for n in nodes},
                path=path,
                boundary=Boundary.from_json(d["boundary"]) if "boundary" in d else Boundary(),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PartitionError(f"profile {path}: malformed ({type(e).__name__}: {e})") from None


def _shapes_text(shapes: Mapping[str, Sequence[int]]) -> str:
    return " ".join(f"{k}={','.join(map(str, v))}" for k, v in shapes.items()) or "(none)"


def profile(
    model: str | Path,
    backend: str | None = None,
    threads: int = 1,
    runs: int = 20,
    shapes: Mapping[str, Sequence[int]] | None = None,
    warmup: int = 5,
    log: Callable[[str], None] | None = None,
    example_shapes: Sequence[str] = (),
    dynamo: bool = False,
) -> Profile:
    """Measure ``model``'s per-node latency on this machine with ``backend`` and ``threads`` intra-op threads.

    ``model`` is an ONNX or .tflite file, or a PyTorch module as ``FILE.py:FACTORY``
    (exported to ONNX with ``example_shapes``, as ``split`` does; the profile is of
    that export). ``backend`` defaults to the model's own engine: onnxruntime for
    ONNX and PyTorch modules, LiteRT for .tflite; ``torch`` needs a module.
    """
    log = log or (lambda _: None)
    if backend is not None and backend not in BACKENDS:
        raise PartitionError(f"--backend {backend}: unknown backend; use one of {', '.join(BACKENDS)}")
    if threads < 1:
        raise PartitionError(f"--threads {threads}: at least one thread is needed")
    if runs < 1:
        raise PartitionError(f"--runs {runs}: at least one timed run is needed")
    if warmup < 0:
        raise PartitionError(f"warmup={warmup}: must not be negative")
    if is_factory(model):
        with tempfile.TemporaryDirectory(prefix="splitpoint-torch-") as tmp:
            exported = export_factory(str(model), example_shapes, dynamo, Path(tmp), log)
            source = Source.open(exported, shapes, log)
            if backend == "torch":
                from partitioner.profile_torch import profile_module

                return profile_module(source, str(model), threads, runs, warmup, dynamo, log)
            return _checked_backend(source, backend, threads, runs, warmup, log)
    if example_shapes or dynamo:
        raise PartitionError("--example-shape and --dynamo are for PyTorch modules, given as FILE.py:FACTORY")
    if backend == "torch":
        raise PartitionError(f"--backend torch profiles a PyTorch module: give the model as FILE.py:FACTORY "
                             f"with --example-shape, not {Path(model).name}")
    log(f"loading {model}")
    fmt = format_of(model).open(model, shapes, log)
    return _checked_backend(fmt.source, backend, threads, runs, warmup, log)


def _checked_backend(source: ModelSource, backend: str | None, threads: int, runs: int, warmup: int,
                     log: Callable[[str], None]) -> Profile:
    own = default_backend(source)
    if backend is not None and backend != own:
        kind = "a TFLite" if own == "litert" else "an ONNX"
        raise PartitionError(f"--backend {backend}: {source.path.name} is {kind} model; profile it with --backend {own}")
    return profile_source(source, threads, runs, warmup, log)


def default_backend(source: ModelSource) -> str:
    """The engine a model's segments run on: LiteRT for .tflite, onnxruntime for ONNX."""
    return "onnxruntime" if isinstance(source, Source) else "litert"


def profile_source(source: ModelSource, threads: int, runs: int, warmup: int, log: Callable[[str], None]) -> Profile:
    """``profile`` for a model already loaded, with its own engine (its golden input 0 is what runs)."""
    if default_backend(source) == "litert":
        from partitioner.profile_litert import profile_tflite  # loads LiteRT: only for .tflite models

        return profile_tflite(source, threads, runs, warmup, log)
    return _profile_onnx(source, threads, runs, warmup, log)


def _profile_onnx(source: Source, threads: int, runs: int, warmup: int, log: Callable[[str], None]) -> Profile:
    view = source.view
    feeds = source.sample(0)
    log(f"profiling {warmup} warm-up + {runs} runs with onnxruntime {ort.__version__}, {threads} thread(s), "
        "each beside a timed run without the profiler")
    tracer = ort_trace.Tracer(source.model, view, threads)  # first: it turns a model onnxruntime refuses into one line
    opener = ort_opener(threads)
    with tempfile.TemporaryDirectory(prefix="splitpoint-profile-") as tmp:
        onnxio.save_model(source.model, Path(tmp) / "model.onnx")
        timed = Timed(opener(Path(tmp) / "model.onnx"))
        onnx.save(_one_node_model(), Path(tmp) / "one_node.onnx")
        empty = Timed(opener(Path(tmp) / "one_node.onnx"))
    probe = BoundaryProbe(OnnxFormat(source), opener, log)
    with gc_paused():
        for k in range(warmup + runs):  # interleaved, so a busy spell on a shared machine hits all alike
            tracer.run(feeds)
            timed.run(feeds, keep=k >= warmup)
            for _ in range(_OVERHEAD_CALLS):
                empty.run({"x": np.zeros(1, np.float32)}, keep=k >= warmup)
            probe.run(feeds, keep=k >= warmup)
            if (k + 1) % 10 == 0 or k + 1 == warmup + runs:
                log(f"profiled {k + 1}/{warmup + runs} runs")
    traced = tracer.finish(warmup)
    nodes = {}
    for i in view.order:
        node, timing = view.graph.node[i], traced.nodes[i]
        fused_into = None
        if timing.fused_into is not None:
            fused_into = node_key(timing.fused_into, view.graph.node[timing.fused_into].name)
        ms = round(timing.ms, 6)  # as the JSON keeps it: the profiler counts whole microseconds anyway
        nodes[i] = NodeProfile(i, node.name, node.op_type, ms, timing.kernels, fused_into, timing.removed)
    backend = {"name": "onnxruntime", "version": ort.__version__, "threads": threads,
               "graph_optimization": "ORT_ENABLE_ALL", "provider": "CPUExecutionProvider"}
    measured = assemble(source, backend, runs, warmup, statistics.median(timed.ms), statistics.median(empty.ms),
                        traced.unattributed_ms, nodes)
    return with_boundary(measured, probe)


def assemble(source: ModelSource, backend: dict[str, Any], runs: int, warmup: int, end_to_end_ms: float,
             call_overhead_ms: float, unattributed_ms: float, nodes: dict[int, NodeProfile]) -> Profile:
    """A profile of ``source`` measured now on this machine (without its boundary: see ``with_boundary``)."""
    return Profile(
        model_file=source.path.name,
        model_sha256=file_sha256(source.path),
        backend=backend,
        machine=machine(),
        shapes=dict(source.input_shapes),
        runs=runs,
        warmup=warmup,
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        end_to_end_ms=end_to_end_ms,
        call_overhead_ms=call_overhead_ms,
        unattributed_ms=unattributed_ms,
        nodes=nodes,
    )


def with_boundary(measured: Profile, probe: BoundaryProbe) -> Profile:
    """``measured`` with the boundary fitted from ``probe``'s segments against its own node times."""
    return replace(measured, boundary=probe.fit(measured.segment_ms))


def machine() -> dict[str, Any]:
    """Platform, CPU model (from /proc/cpuinfo where there is one), CPU count and Python version."""
    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": processor, "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def _one_node_model() -> onnx.ModelProto:
    """A one-element Identity: what a call costs when it computes nothing."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "overhead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model

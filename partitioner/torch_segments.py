"""PyTorch segments: each split's edge prefix and cloud suffix cut from the module's own graph.

A bundle made from a torch module (``split_torch``, or ``splitpoint split
FILE.py:FACTORY``) holds, beside its ONNX files, the same splits as PyTorch
programs, so the edge can run its prefix and local suffix on PyTorch
(``EdgeRuntime(bundle, backend="torch")``) while the worker runs the ONNX suffix.

How, and why this way:

- The graph is ``torch.export``'s: an FX graph of ATen ops with the batch
  dimension symbolic. ``torch.fx.symbolic_trace`` cannot trace common forwards
  (``n, t, d = x.shape``, unpacking a tensor, as in the transformer).
- An ONNX cut tensor is mapped to the FX node that computes the same values on
  the golden input, with the node of the same name first among equals and the
  earliest after. Names alone do not do: the legacy exporter names a
  convolution's output ``/conv1/Conv_output_0`` after folding the batch norm
  into it (its values are the batch norm's), and the dynamo exporter names
  nodes after its decomposed graph (``add_45`` where torch.export says ``add_2``).
- The two sub-graphs are built by walking back from their outputs (the prefix
  from the sent tensors, the suffix from the model outputs, stopping at the
  sent tensors). A symbolic size the suffix reads (a reshape's batch) is taken
  from a sent tensor of that size, not from a model input it does not have.
- Segments are saved as ``torch.export`` programs (``.pt2``), not TorchScript:
  ``torch.jit.trace`` of an exported sub-graph bakes the example's sizes into
  its reshapes (the transformer traced at batch 2 fails at batch 3), and all of
  ``torch.jit`` is deprecated in torch 2.13. An exported program keeps the batch
  symbolic and loads without the model's Python code.

Before anything is written, every split runs on the golden inputs three ways:
ONNX prefix and suffix, PyTorch prefix with the ONNX suffix (the edge talking to
a worker) and PyTorch prefix and suffix (local completion); the sent tensors and
the outputs must agree within ``splitpoint.compare``'s tolerance.
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from partitioner import onnxio
from partitioner.bundler import split
from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from partitioner.measure import _run_exposing
from partitioner.pytorch import from_torch, import_torch
from partitioner.verify import edge_then_cloud
from splitpoint.backends import Session, load_session, save_exported
from splitpoint.bundle import Bundle, Manifest, Split, TensorSpec, file_sha256, write_manifest
from splitpoint.compare import EXACT, Difference, difference
from splitpoint.errors import SplitpointError, first_line

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram
    from torch.fx import Graph, GraphModule, Node

MODEL_FILE = "model.pt2"
SUFFIX = ".pt2"
OPT_OUT = "pass --no-torch-segments (split_torch(..., torch_segments=False)) to write ONNX segments only"
Log = Callable[[str], None]


def export_program(module: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> ExportedProgram:
    """``module`` (in eval mode) as a ``torch.export`` program, the first dimension of each input dynamic as in
    ``from_torch``'s ONNX. A batch of one is repeated to two for the export: torch.export fixes sizes of 1."""
    torch = import_torch()
    examples = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    examples = tuple(x.repeat(2, *[1] * (x.ndim - 1)) if x.ndim and x.shape[0] == 1 else x for x in examples)
    shapes = tuple({0: torch.export.Dim.AUTO} if x.ndim else None for x in examples)
    training = module.training
    module.eval()
    try:
        return torch.export.export(module, examples, dynamic_shapes=shapes)
    except Exception as e:  # torch.export raises many types (guards, unsupported ops, data-dependent flow)
        raise PartitionError(f"torch.export failed, so there can be no PyTorch segments: {first_line(e)}; "
                             f"{OPT_OUT}") from None
    finally:
        module.train(training)


def split_torch(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    out: str | Path,
    at: str | Sequence[str] | Sequence[Sequence[str]] = "auto",
    *,
    dynamo: bool = False,
    input_names: Sequence[str] | None = None,
    torch_segments: bool = True,
    log: Log | None = None,
    **options: Any,
) -> Bundle:
    """Export ``module`` to ONNX (``from_torch``), split it like ``partitioner.split`` (``options`` are its
    arguments) and add the PyTorch segments of every split, verified against the ONNX ones."""
    log = log or (lambda _: None)
    program = export_program(module, example_inputs) if torch_segments else None
    with tempfile.TemporaryDirectory(prefix="splitpoint-torch-") as tmp:
        model = from_torch(module, example_inputs, dynamo=dynamo, input_names=input_names,
                           path=Path(tmp) / f"{type(module).__name__}.onnx")
        finish = None if program is None else lambda root: write_torch_segments(root, program, log)
        return split(model, out, at, log=log, finish=finish, **options)


def segments_from_file(program_file: Path, log: Log) -> Callable[[Path], None]:
    """The ``split(finish=...)`` step writing PyTorch segments from a saved program (the CLI's FILE.py:FACTORY)."""

    def finish(root: Path) -> None:
        torch = import_torch()
        write_torch_segments(root, torch.export.load(str(program_file)), log)

    return finish


def write_torch_segments(root: Path, program: ExportedProgram, log: Log) -> None:
    """Add the PyTorch segments of every split to the bundle in ``root`` (the full model too) and record
    them in its manifest; a PartitionError, with nothing recorded, if any split fails."""
    bundle = Bundle(root)
    m = bundle.manifest
    graph = TorchGraph(program, m)
    cases = bundle.golden_cases()
    if not cases:
        raise PartitionError(f"bundle {root} has no golden cases to check PyTorch segments on")
    probe = _probe(cases[0][0], m.inputs)
    fx_values = graph.values(probe)
    log(f"writing PyTorch segments ({MODEL_FILE}, edge/*{SUFFIX}, cloud/*{SUFFIX}) and checking them on "
        f"{len(cases)} golden input(s)")
    _check_full(_save(program, root / MODEL_FILE, m.inputs, m.outputs), cases)
    splits = []
    for s in m.splits:
        if s.edge_file is None:  # local runs the full model; cloud completes locally with it
            splits.append(replace(s, torch_cloud_file=None if s.cloud_file is None else MODEL_FILE))
            continue
        splits.append(_write_split(bundle, graph, s, probe, fx_values, cases))
        log(f"split {s.id}: PyTorch segments agree with the ONNX split, "
            f"max_rel {splits[-1].verification['torch']['max_rel']:.3g}")
    write_manifest(root, replace(m, splits=tuple(splits), torch_model_file=MODEL_FILE,
                                 torch_model_sha256=file_sha256(root / MODEL_FILE)))


class _Unmatched(Exception):
    def __init__(self, name: str):
        self.name = name


class TorchGraph:
    """The exported program's FX graph, with the model's inputs and outputs named as in the manifest."""

    def __init__(self, program: ExportedProgram, manifest: Manifest):
        self.torch = import_torch()
        self.module: GraphModule = program.module()
        nodes = list(self.module.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        returned = self.module.graph.output_node().args[0]
        outputs = list(returned) if isinstance(returned, (tuple, list)) else [returned]
        if len(placeholders) != len(manifest.inputs) or len(outputs) != len(manifest.outputs):
            raise PartitionError(
                f"the PyTorch program takes {len(placeholders)} input(s) and returns {len(outputs)}, the ONNX model "
                f"{len(manifest.inputs)} and {len(manifest.outputs)}: they are not the same model")
        self.inputs: dict[str, Node] = {s.name: n for s, n in zip(manifest.inputs, placeholders)}
        self.outputs: dict[str, Node] = {s.name: n for s, n in zip(manifest.outputs, outputs)}
        self.position = {n: k for k, n in enumerate(nodes)}

    def values(self, inputs: Tensors) -> dict[Node, torch.Tensor]:
        """Every tensor the graph computes on ``inputs``, by node."""
        torch = self.torch
        recorded: dict[Node, torch.Tensor] = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n: Node) -> Any:
                value = super().run_node(n)
                if isinstance(value, torch.Tensor):
                    recorded[n] = value.detach()
                return value

        with torch.no_grad():
            Recorder(self.module).run(*(torch.from_numpy(inputs[name]) for name in self.inputs))
        return recorded

    def locate(self, names: Iterable[str], onnx_values: Tensors, fx_values: Mapping[Node, torch.Tensor]) -> dict[str, Node]:
        """The FX node of each ONNX tensor ``names``: by position for model inputs and outputs, by value otherwise."""
        located = {}
        for name in names:
            known = self.inputs.get(name, self.outputs.get(name))
            located[name] = known if known is not None else self._match(name, onnx_values[name], fx_values)
        return located

    def _match(self, name: str, want: np.ndarray, fx_values: Mapping[Node, torch.Tensor]) -> Node:
        """The node whose values equal ``want`` (within the tolerance): exact first, then the closest, then the one
        named ``name`` (a node, or a weight's attribute path), then the earliest."""
        ranked = []
        for node, value in fx_values.items():
            if tuple(value.shape) == want.shape and _numpy_dtype(value) == want.dtype:
                d = difference({name: want}, {name: value.numpy()})
                if d.ok:
                    ranked.append(((not d.exact, d.max_rel, name not in (node.name, node.target), self.position[node]), node))
        if not ranked:
            raise _Unmatched(name)
        return min(ranked, key=lambda r: r[0])[1]

    def segment(self, inputs: Sequence[Node], outputs: Sequence[Node], what: str) -> GraphModule:
        """The sub-graph computing ``outputs`` from ``inputs`` (and the weights); PartitionError naming
        ``what`` if it needs a model input that is not among ``inputs``."""
        torch = self.torch
        given = set(inputs)
        sizes = {str(d): (k, dim) for k, n in enumerate(inputs) for dim, d in enumerate(_shape(n))
                 if isinstance(d, torch.SymInt)}
        needed: set[Node] = set()
        resized: dict[Node, tuple[int, int]] = {}  # symbolic sizes taken from an input of that size
        stack = list(outputs)
        while stack:
            n = stack.pop()
            if n in needed or n in given:
                continue
            needed.add(n)
            val = n.meta.get("val")
            if isinstance(val, torch.SymInt) and str(val) in sizes:
                resized[n] = sizes[str(val)]
            elif n.op == "placeholder":
                missing = next(name for name, node in self.inputs.items() if node is n)
                raise PartitionError(f"{what} also needs model input {missing!r}, which it is not given")
            else:
                stack.extend(n.all_input_nodes)
        graph: Graph = torch.fx.Graph()
        env = {n: graph.placeholder(f"input_{k}") for k, n in enumerate(inputs)}
        for n in self.module.graph.nodes:
            if n in resized:
                k, dim = resized[n]
                env[n] = graph.call_function(torch.ops.aten.sym_size.int, (env[inputs[k]], dim))
            elif n in needed:
                env[n] = graph.node_copy(n, lambda a: env[a])
        graph.output(tuple(env[n] for n in outputs))
        return torch.fx.GraphModule(self.module, graph)

    def export(self, module: GraphModule, inputs: Sequence[Node], fx_values: Mapping[Node, torch.Tensor]) -> ExportedProgram:
        """A segment as a program of its own, symbolic where the model's graph is (the batch)."""
        torch = self.torch
        auto = torch.export.Dim.AUTO
        shapes = tuple({dim: auto for dim, d in enumerate(_shape(n)) if isinstance(d, torch.SymInt)} or None
                       for n in inputs)
        return torch.export.export(module, tuple(fx_values[n] for n in inputs), dynamic_shapes=shapes)


def _shape(node: Node) -> tuple[Any, ...]:
    val = node.meta.get("val")
    return tuple(val.shape) if hasattr(val, "shape") else ()


def _numpy_dtype(value: torch.Tensor) -> np.dtype | None:
    try:
        return np.dtype(str(value.dtype).removeprefix("torch."))
    except TypeError:  # bfloat16 and other types numpy does not have
        return None


def _probe(inputs: Tensors, specs: Sequence[TensorSpec]) -> Tensors:
    """A golden input with a dynamic batch of one repeated to two: the size segments are exported at."""
    return {s.name: np.repeat(inputs[s.name], 2, axis=0)
            if s.shape and not isinstance(s.shape[0], int) and inputs[s.name].shape[0] == 1 else inputs[s.name]
            for s in specs}


def _write_split(
    bundle: Bundle, graph: TorchGraph, s: Split, probe: Tensors, fx_values: Mapping[Node, torch.Tensor],
    cases: Sequence[tuple[Tensors, Tensors]],
) -> Split:
    """Build, export, save and check the two PyTorch segments of ``s``; ``s`` with them recorded."""
    assert s.edge_file is not None and s.cloud_file is not None
    root = bundle.root
    onnx_edge, onnx_cloud = load_session(root / s.edge_file), load_session(root / s.cloud_file)
    onnx_values = {**probe, **onnx_edge.run(probe)}
    try:
        node_of = {**graph.inputs, **graph.outputs, **graph.locate(s.sent_names, onnx_values, fx_values)}
    except _Unmatched as e:
        near = _expressible(graph, onnxio.load_model(bundle.model_path()), probe, fx_values, e.name)
        hint = f"; tensors near it that it has: {', '.join(map(repr, near))}" if near else ""
        raise PartitionError(f"split {s.id!r}: the PyTorch graph cannot cut at {e.name!r}: none of its nodes "
                             f"computes that tensor{hint}; cut elsewhere, or {OPT_OUT}") from None
    sessions = []
    for side, onnx_side in (("edge", onnx_edge), ("cloud", onnx_cloud)):
        what = f"split {s.id!r}: the PyTorch {side} segment"
        inputs = [node_of[t.name] for t in onnx_side.inputs]
        module = graph.segment(inputs, [node_of[t.name] for t in onnx_side.outputs], what)
        try:
            program = graph.export(module, inputs, fx_values)
        except Exception as e:  # torch.export raises many types
            raise PartitionError(f"{what} does not export: {first_line(e)}; {OPT_OUT}") from None
        sessions.append(_save(program, root / side / f"{s.id}{SUFFIX}", onnx_side.inputs, onnx_side.outputs))
    torch_edge, torch_cloud = sessions
    checked = [t.name for t in [*onnx_edge.outputs, *onnx_cloud.outputs]]  # the sent tensors and the outputs
    worst = EXACT
    for k, (inputs, _) in enumerate(cases):
        onnx_run = edge_then_cloud(onnx_edge, onnx_cloud, inputs)
        for path, cloud in (("with the ONNX suffix", onnx_cloud), ("with the PyTorch suffix", torch_cloud)):
            what = f"split {s.id!r}: the PyTorch prefix {path}"
            try:
                run = edge_then_cloud(torch_edge, cloud, inputs)
            except (SplitpointError, RuntimeError) as e:
                raise PartitionError(f"{what} fails: {first_line(e)}") from None
            worst = worst.worst(_agreement({n: onnx_run[n] for n in checked}, run, what, k))
    return replace(s, torch_edge_file=f"edge/{s.id}{SUFFIX}", torch_cloud_file=f"cloud/{s.id}{SUFFIX}",
                   verification={**s.verification, "torch": worst.as_dict()})


def _save(program: ExportedProgram, path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Session:
    """Write ``program`` with its specs and load it back as the edge will."""
    path.parent.mkdir(exist_ok=True)
    save_exported(program, path, list(inputs), list(outputs))
    return load_session(path)


def _check_full(session: Session, cases: Sequence[tuple[Tensors, Tensors]]) -> None:
    for k, (inputs, reference) in enumerate(cases):
        _agreement(reference, session.run(inputs), f"the PyTorch program {MODEL_FILE}", k)


def _agreement(reference: Tensors, actual: Tensors, what: str, case: int) -> Difference:
    """How far ``actual`` is from ``reference``; PartitionError naming the tensor when beyond the tolerance."""
    worst = EXACT
    for name, ref in reference.items():
        got = actual[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise PartitionError(f"{what} gives {name!r} as {got.dtype}{list(got.shape)} where the ONNX model gives "
                                 f"{ref.dtype}{list(ref.shape)} (golden case {case})")
        d = difference({name: ref}, {name: got})
        if not d.ok:
            raise PartitionError(f"{what} does not reproduce {name!r} on golden case {case}: {d.describe()}")
        worst = worst.worst(d)
    return worst


def _expressible(graph: TorchGraph, onnx_model: Any, probe: Tensors, fx_values: Mapping[Node, torch.Tensor],
                 name: str, count: int = 3) -> list[str]:
    """The ONNX tensors nearest ``name`` by name that the PyTorch graph does compute."""
    produced = [o for node in onnx_model.graph.node for o in node.output if o and o != name]
    near = difflib.get_close_matches(name, produced, n=len(produced), cutoff=0.0)[: 10 * count]
    values = dict(zip(near, _run_exposing(onnx_model, near, probe)))
    found = []
    for candidate in near:
        try:
            graph.locate([candidate], values, fx_values)
        except _Unmatched:
            continue
        found.append(candidate)
        if len(found) == count:
            break
    return found

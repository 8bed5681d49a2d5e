"""PyTorch modules in: exported to ONNX with tensor names that follow module paths, so operators recognise cut points.

Either exporter works. The legacy (TorchScript) one, the default here, names
tensors by module path itself: ``/layer1/layer1.0/relu/Relu_output_0``. The
dynamo one names them after FX nodes (``relu_8``) but records each node's
module scopes in its metadata (``pkg.torch.onnx.name_scopes``); from those the
tensors are renamed ``/MODULE.PATH/OP_output_K``, with the module's dotted path
as ``named_modules()`` lists it: ``/layer1.0.relu/Relu_output_0``, then
``/layer1.0.relu/Relu_1_output_0`` for its second call. A batch norm folded
into its convolution names the result after the batch norm (it is its output).
Nodes without scopes keep their names.

torch is imported only when a module is exported. The CLI takes a module as
``FILE.py:FACTORY`` and exports it in a subprocess (``partitioner.torch_child``):
torch loaded into a process slows onnxruntime there afterwards. For ``split``
the subprocess also saves the module as a ``torch.export`` program beside the
ONNX file (``program_file``), from the same instance, so the PyTorch segments
(``partitioner.torch_segments``) have the ONNX model's weights.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from partitioner import onnxio
from partitioner.errors import PartitionError
from partitioner.graph import subgraphs
from splitpoint.errors import first_line

if TYPE_CHECKING:
    import torch

TORCH_EXTRA = "pip install 'splitpoint[torch]'"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
EXAMPLE_DTYPES = ("float32", "float16", "float64", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
_FACTORY = re.compile(r"(?P<file>.+\.py):(?P<name>[A-Za-z_]\w*)")


def import_torch() -> Any:
    """torch, or a PartitionError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise PartitionError(f"PyTorch is not installed; to export a module to ONNX: {TORCH_EXTRA}") from None
    return torch


def from_torch(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    dynamo: bool = False,
    input_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    path: str | Path | None = None,
) -> Path:
    """Export ``module`` to an ONNX file (``path``, or a new temporary directory's) and return its path.

    The module runs in eval mode for the export (its mode is restored after).
    Inputs are named ``input_names`` (default: ``forward``'s parameter names),
    outputs ``output`` (or ``output_0``, ``output_1``, ...); with
    ``dynamic_batch`` the first dimension of each is dynamic. Weights are
    embedded unless the model is over 2 GB.
    """
    torch = import_torch()
    if not isinstance(module, torch.nn.Module):
        raise PartitionError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    examples = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise PartitionError("example_inputs must be a tensor or a sequence of tensors, one per forward argument")
    names = list(input_names) if input_names is not None else _argument_names(module, len(examples))
    if len(names) != len(examples):
        raise PartitionError(f"{len(names)} input name(s) for {len(examples)} example input(s)")
    training = module.training
    module.eval()
    try:
        output_names = _output_names(torch, _run_once(torch, module, examples, names))
        with tempfile.TemporaryDirectory(prefix="splitpoint-export-") as tmp:
            exported = Path(tmp) / "model.onnx"
            _export(torch, module, examples, exported, dynamo, names, output_names, dynamic_batch)
            model = onnxio.load_model(exported)
    finally:
        module.train(training)
    if dynamo:
        name_by_module_path(model.graph)
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="splitpoint-torch-")) / f"{type(module).__name__}.onnx"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnxio.save_model(model, target)
    return target


def _argument_names(module: torch.nn.Module, count: int) -> list[str]:
    """``forward``'s positional parameter names, ``input_K`` where it has none to give."""
    params = [p.name for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [params[k] if k < len(params) else f"input_{k}" for k in range(count)]


def _run_once(torch: Any, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], names: list[str]) -> object:
    """The module's outputs on the examples; a bad example shape fails here, in one line, rather than in the exporter."""
    try:
        with torch.no_grad():
            return module(*examples)
    except Exception as e:  # whatever the user's forward raises
        given = ", ".join(f"{n} {str(x.dtype).removeprefix('torch.')}{list(x.shape)}" for n, x in zip(names, examples))
        raise PartitionError(f"the module fails on the example inputs ({given}): {type(e).__name__}: {first_line(e)}") from None


def _output_names(torch: Any, outputs: object) -> list[str] | None:
    """Names for a tensor or a tuple/list of tensors; None (the exporter's names) for other structures."""
    if isinstance(outputs, torch.Tensor):
        return ["output"]
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return [f"output_{k}" for k in range(len(outputs))]
    return None


def _export(
    torch: Any, module: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path, dynamo: bool,
    input_names: list[str], output_names: list[str] | None, dynamic_batch: bool,
) -> None:
    try:
        if dynamo:
            batch = torch.export.Dim("batch")
            shapes = tuple({0: batch} if x.ndim > 0 else None for x in examples) if dynamic_batch else None
            torch.onnx.export(module, examples, path, dynamo=True, input_names=input_names, output_names=output_names,
                              dynamic_shapes=shapes, verbose=False)
        else:
            batched = [n for n, x in zip(input_names, examples) if x.ndim > 0] + (output_names or [])
            axes = {n: {0: "batch"} for n in batched} if dynamic_batch else None
            with warnings.catch_warnings():  # the legacy exporter is deprecated; it is chosen for its names
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(module, examples, path, dynamo=False, input_names=input_names,
                                  output_names=output_names, dynamic_axes=axes)
    except Exception as e:  # torch raises many types (export, tracing, onnxscript): the message is the point
        raise PartitionError(f"torch.onnx.export failed: {first_line(e)}") from None


def name_by_module_path(graph: onnx.GraphProto) -> None:
    """Rename ``graph``'s nodes and internal tensors after their module scopes (see the module docstring).

    Graph inputs, outputs and weights keep their names; so does any node
    without scope metadata or whose new name is taken.
    """
    kept = {vi.name for vi in [*graph.input, *graph.output]} | {t.name for t in graph.initializer}
    taken = kept | {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    calls: Counter[str] = Counter()
    renamed: dict[str, str] = {}
    for node in graph.node:
        path = _module_path(node)
        if path is None:
            continue
        base = f"/{path}/{node.op_type}" if path else f"/{node.op_type}"
        op = base if calls[base] == 0 else f"{base}_{calls[base]}"
        calls[base] += 1
        if op not in taken:
            node.name = op
            taken.add(op)
        for k, old in enumerate(node.output):
            new = f"{op}_output_{k}"
            if old and old not in kept and new not in taken:
                renamed[old] = new
                taken.add(new)
    _rename(graph, renamed)
    for vi in graph.value_info:
        vi.name = renamed.get(vi.name, vi.name)


def _module_path(node: onnx.NodeProto) -> str | None:
    """The dotted path of the innermost module that computed ``node`` ('' at the top), or None if not recorded."""
    text = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    try:
        scopes = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        return None
    return scopes[-2] if len(scopes) > 1 else ""  # the last scope is the FX node itself


def _rename(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """Apply ``renamed`` to every node's inputs and outputs, in bodies too (they read outer tensors)."""
    for node in graph.node:
        node.input[:] = [renamed.get(t, t) for t in node.input]
        node.output[:] = [renamed.get(t, t) for t in node.output]
        for body in subgraphs(node):
            _rename(body, renamed)


def parse_example_shape(text: str) -> tuple[tuple[int, ...], str]:
    """``"1,3,224,224"`` or ``"1,64:int64"``: the shape and dtype of one example input (float32 by default)."""
    dims, _, dtype = text.partition(":")
    dtype = dtype.strip() or "float32"
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise PartitionError(f"--example-shape {text!r}: expected D0,D1,...[:DTYPE], e.g. 1,3,224,224") from None
    if any(d < 0 for d in shape):
        raise PartitionError(f"--example-shape {text!r}: dimensions must not be negative")
    if dtype not in EXAMPLE_DTYPES:
        raise PartitionError(f"--example-shape {text!r}: dtype {dtype!r} is not one of {', '.join(EXAMPLE_DTYPES)}")
    return shape, dtype


def is_factory(model: str | Path) -> bool:
    """Whether ``model`` names a PyTorch module factory, ``FILE.py:FACTORY``."""
    return _FACTORY.fullmatch(str(model)) is not None


def program_file(onnx_file: Path) -> Path:
    """Where ``export_factory(..., program=True)`` saves the module's ``torch.export`` program."""
    return onnx_file.with_suffix(".pt2")


@contextmanager
def model_file(
    model: str | Path, example_shapes: Sequence[str], dynamo: bool, log: Callable[[str], None], program: bool = False
) -> Iterator[Path]:
    """``model`` as a model file: itself, or ``FILE.py:FACTORY`` exported to a temporary file while in use
    (with its ``program_file`` too if ``program``)."""
    if not is_factory(model):
        if example_shapes or dynamo:
            raise PartitionError("--example-shape and --dynamo are for PyTorch modules, given as FILE.py:FACTORY")
        yield Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="splitpoint-torch-") as tmp:
        yield export_factory(str(model), example_shapes, dynamo, Path(tmp), log, program)


def export_factory(
    spec: str, example_shapes: Sequence[str], dynamo: bool, directory: Path, log: Callable[[str], None],
    program: bool = False,
) -> Path:
    """Export the module ``FILE.py:FACTORY`` returns to ``directory/FACTORY.onnx``, in a subprocess
    (and, if ``program``, to its ``program_file``)."""
    match = _FACTORY.fullmatch(spec)
    if match is None:
        raise PartitionError(f"{spec}: expected FILE.py:FACTORY")
    file, name = Path(match["file"]), match["name"]
    if not file.is_file():
        raise PartitionError(f"{file}: no such file")
    if not example_shapes:
        raise PartitionError(f"{spec}: give the shape of each forward input with --example-shape, e.g. 1,3,224,224")
    for text in example_shapes:
        parse_example_shape(text)
    if not _torch_installed():
        raise PartitionError(f"PyTorch is not installed; to export {spec}: {TORCH_EXTRA}")
    out = directory / f"{name}.onnx"
    log(f"exporting {spec} to ONNX with the {'dynamo' if dynamo else 'legacy'} exporter, in a subprocess")
    run_child("partitioner.torch_child", [str(file), name, str(out),
                                          *(a for s in example_shapes for a in ("--example-shape", s)),
                                          *(["--dynamo"] if dynamo else []), *(["--program"] if program else [])],
              f"{spec}: exporting failed")
    return out


def run_child(module: str, args: Sequence[str], failed: str) -> None:
    """Run ``python -m module args`` (torch work stays out of this process); a failure becomes one
    PartitionError: the child's last ``error:`` line, or ``failed`` and its last line of stderr."""
    root = str(Path(__file__).resolve().parents[1])  # the child imports this very partitioner
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reported = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        raise PartitionError(reported[-1] if reported else f"{failed}: {lines[-1] if lines else done.returncode}")


def _torch_installed() -> bool:
    """Whether torch can be imported, without importing it (this process stays free of it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:  # sys.modules maps it to None: importing it is blocked
        return False

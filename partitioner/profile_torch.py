"""Per-node latency of a PyTorch module, measured in torch with ``torch.profiler``, on the nodes of its ONNX export.

Plans and bundles work on the module's ONNX export, so a torch profile is keyed
by that export's nodes, like an onnxruntime profile of the same file. The
module runs in a subprocess (``python -m partitioner.profile_torch``: torch
loaded here would slow onnxruntime in this process) on golden input 0 of the
export, ``--warmup`` + ``--runs`` times with ``torch.profiler`` (record_shapes)
on and module hooks opening a ``record_function`` range per module call, each
run beside a timed run without the profiler and a few calls of a one-op
module (the fixed cost of a call). A call's *self* time is its range minus its
child modules' ranges: the aten operators it runs itself, and its Python.

Mapping to the export's nodes, by module path: both exporters name a node after
the module that computed it (``/layer1/layer1.0/conv1/Conv`` legacy,
``/layer1.0.conv1/Conv`` dynamo, see ``partitioner.pytorch``); the root module's
own operators are the nodes named ``/Op``. A module's self time goes to the
nodes of its scope: operator by operator, in order, when the module ran as
many top-level aten operators as it has nodes (the ``kernels`` say which), else
shared evenly. A module with no node of its own (a batch norm folded into its
convolution, a container, an Identity) gives its time to the nearest sibling
call that has nodes: the following one for the dynamo exporter (which names a
folded result after the later module), the preceding one for the legacy one,
else the other way, else its parent. What finds no node at all is
``unattributed_ms``. Medians over the runs, per call.

No boundary term is measured: segments of a torch module are ONNX files, not
torch programs, so the boundary stays 0.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from partitioner.errors import PartitionError
from partitioner.profile import NodeProfile, Profile, assemble
from partitioner.pytorch import run_child
from partitioner.source import Source

_CALL_SUFFIX = re.compile(r"_\d+$")  # the legacy exporter's second call of a module: relu_1
_OVERHEAD_CALLS = 10


def profile_module(source: Source, spec: str, threads: int, runs: int, warmup: int, dynamo: bool,
                   log: Callable[[str], None]) -> Profile:
    """Profile the module ``spec`` (``FILE.py:FACTORY``) in torch; ``source`` is its ONNX export."""
    file, _, factory = spec.rpartition(":")
    feeds = source.sample(0)
    log(f"profiling {warmup} warm-up + {runs} runs with torch.profiler, {threads} thread(s), in a subprocess")
    with tempfile.TemporaryDirectory(prefix="splitpoint-torch-profile-") as tmp:
        inputs, out = Path(tmp) / "inputs.npz", Path(tmp) / "calls.json"
        np.savez(inputs, *(feeds[name] for name in source.view.inputs))
        run_child("partitioner.profile_torch", [file, factory, str(inputs), str(out), "--threads", str(threads),
                                                "--runs", str(runs), "--warmup", str(warmup)],
                  f"{spec}: profiling in torch failed")
        measured = json.loads(out.read_text())
    ms, kernels, unattributed = attribute(source, measured["modules"], measured["calls"], dynamo)
    view = source.view
    nodes = {i: NodeProfile(i, view.graph.node[i].name, view.graph.node[i].op_type, round(ms.get(i, 0.0), 6),
                            tuple(kernels.get(i, ()))) for i in view.order}
    backend = {"name": "torch", "version": measured["torch"], "threads": threads, "profiler": "torch.profiler",
               "mapped_to": f"ONNX export ({'dynamo' if dynamo else 'legacy'} exporter), by module path"}
    return assemble(source, backend, runs, warmup, measured["end_to_end_ms"], measured["call_overhead_ms"],
                    unattributed, nodes)


def scope_of(name: str, modules: set[str]) -> str:
    """The dotted path of the module a node of the export is named after ('' for the root and unknown names)."""
    parts = name.strip("/").split("/")[:-1] if name.startswith("/") else []
    path = ""
    for part in parts:
        for candidate in (part, _CALL_SUFFIX.sub("", part)):
            nested = f"{path}.{candidate}" if path else candidate
            if nested in modules or candidate in modules:
                path = nested if nested in modules else candidate
                break
        else:
            break
    return path


def attribute(source: Source, modules: list[str], calls: list[dict[str, Any]], dynamo: bool
              ) -> tuple[dict[int, float], dict[int, list[str]], float]:
    """Node times, node kernels (the aten operators they stand for) and the unattributed ms, from module calls."""
    view = source.view
    known = set(modules)
    scope_nodes: dict[str, list[int]] = defaultdict(list)
    for i in view.order:
        scope_nodes[scope_of(view.graph.node[i].name, known)].append(i)
    ms: dict[int, float] = defaultdict(float)
    kernels: dict[int, list[str]] = defaultdict(list)
    own: dict[str, list[list[Any]]] = defaultdict(list)  # path -> [op, ms] of all its calls, in order
    spent: dict[str, float] = defaultdict(float)  # path -> self ms of all its calls
    unattributed = 0.0
    for k, call in enumerate(calls):
        if scope_nodes.get(call["path"]):
            own[call["path"]] += call["ops"]
            spent[call["path"]] += call["self_ms"]
            continue
        target = _home(calls, k, scope_nodes, dynamo)
        if target is None:
            unattributed += call["self_ms"]
        else:
            ms[target] += call["self_ms"]
            kernels[target] += [op for op, _ in call["ops"]]
    for path, ops in own.items():
        nodes = scope_nodes[path]
        if len(ops) == len(nodes):  # operator by operator; the module's Python shared evenly
            python = (spent[path] - sum(t for _, t in ops)) / len(nodes)
            for i, (op, t) in zip(nodes, ops):
                ms[i] += t + python
                kernels[i].append(op)
        else:
            for i in nodes:
                ms[i] += spent[path] / len(nodes)
                kernels[i] += [op for op, _ in ops]
    return dict(ms), {i: sorted(set(k)) for i, k in kernels.items()}, unattributed


def _home(calls: list[dict[str, Any]], k: int, scope_nodes: dict[str, list[int]], dynamo: bool) -> int | None:
    """The node that takes call ``k``'s time when its module has no node of its own (see the module docstring)."""
    while k is not None:
        parent = calls[k]["parent"]
        siblings = [j for j, c in enumerate(calls) if c["parent"] == parent]
        position = siblings.index(k)
        after = [j for j in siblings[position + 1 :] if scope_nodes.get(calls[j]["path"])]
        before = [j for j in reversed(siblings[:position]) if scope_nodes.get(calls[j]["path"])]
        for side, nodes_end in ((after, 0), (before, -1)) if dynamo else ((before, -1), (after, 0)):
            if side:
                return scope_nodes[calls[side[0]]["path"]][nodes_end]
        if parent is not None and scope_nodes.get(calls[parent]["path"]):
            return scope_nodes[calls[parent]["path"]][0]
        k = parent
    return None


# -- the subprocess -----------------------------------------------------------------


def _measure(file: Path, factory: str, inputs: Path, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, record_function

    from partitioner.torch_child import make_module

    torch.set_num_threads(threads)
    module = make_module(file, factory).eval()
    with np.load(inputs) as data:
        args = [torch.from_numpy(data[f"arr_{k}"]) for k in range(len(data.files))]
    ranges: list[Any] = []
    active = [False]

    def enter(path: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if active[0]:
                ranges.append(record_function(f"sp::{path}").__enter__())
        return hook

    def leave(*_: Any) -> None:
        if active[0]:
            ranges.pop().__exit__(None, None, None)

    paths = [path for path, _ in module.named_modules()]
    for path, sub in module.named_modules():
        sub.register_forward_pre_hook(enter(path))
        sub.register_forward_hook(leave)
    empty, one = torch.nn.Identity(), torch.zeros(1)
    per_run: list[list[dict[str, Any]]] = []
    timed, overhead = [], []
    with torch.inference_mode():
        for k in range(warmup + runs):
            active[0] = True
            with torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                module(*args)
            active[0] = False
            start = time.perf_counter()
            module(*args)
            elapsed = (time.perf_counter() - start) * 1e3
            for _ in range(_OVERHEAD_CALLS):
                start = time.perf_counter()
                empty(one)
                overhead.append((time.perf_counter() - start) * 1e3)
            if k >= warmup:
                timed.append(elapsed)
                per_run.append(_calls(prof.events()))
    calls = [{"path": first["path"], "parent": first["parent"],
              "self_ms": statistics.median(run[c]["self_ms"] for run in per_run),
              "ops": [[op, statistics.median(run[c]["ops"][j][1] for run in per_run)] for j, (op, _) in enumerate(first["ops"])]}
             for c, first in enumerate(per_run[0])]
    return {"torch": torch.__version__, "end_to_end_ms": statistics.median(timed),
            "call_overhead_ms": statistics.median(overhead), "modules": paths, "calls": calls}


def _calls(events: Any) -> list[dict[str, Any]]:
    """Module calls of one run in call order: path, parent call, self ms and the aten operators run directly."""
    ranges = sorted((e for e in events if e.name.startswith("sp::")), key=lambda e: e.time_range.start)
    index = {id(e): k for k, e in enumerate(ranges)}
    calls = [{"path": e.name[4:], "parent": None, "self_ms": 0.0, "ops": []} for e in ranges]
    for k, e in enumerate(ranges):
        children = 0.0
        for c in e.cpu_children:
            if id(c) in index:
                calls[index[id(c)]]["parent"] = k
                children += c.time_range.elapsed_us()
            else:
                shape = c.input_shapes[0] if c.input_shapes and c.input_shapes[0] else []
                calls[k]["ops"].append([f"{c.name}{list(shape)}", c.time_range.elapsed_us() / 1e3])
        calls[k]["self_ms"] = (e.time_range.elapsed_us() - children) / 1e3
    return calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m partitioner.profile_torch")
    p.add_argument("file", type=Path)
    p.add_argument("factory")
    p.add_argument("inputs", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    args = p.parse_args(argv)
    try:
        measured = _measure(args.file, args.factory, args.inputs, args.threads, args.runs, args.warmup)
    except PartitionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())

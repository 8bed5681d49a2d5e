"""How far apart do correct float32 runtimes drift? The data for a tolerance of K * eps * max|reference|.

A fixed tolerance of 1e-5 x max|reference| refused a correct pair: on an Intel Xeon, PyTorch
against onnxruntime on a small transformer differed by 1.43e-5 (about 120 eps of float32).
This script measures how far correct runtimes actually drift apart, in units of eps = 2**-23,
so K can be chosen from data.

For every model it compares: each float32 runtime against the model in float64 (the
truth); PyTorch against onnxruntime (legacy and dynamo exports); onnxruntime with all graph
optimisations against none; 1, 2 and 8 intra-op threads, in both runtimes; batch 3 against
three runs of batch 1, row by row; a split model (``partitioner.split``) against the whole
one; and PyTorch on the kernel paths of other CPUs, emulated by capping the ISA of its
kernel libraries (ATen, oneDNN, MKL) in a subprocess. onnxruntime has no such switch.

Each figure is max|actual - reference| / max|reference| over one output, as
``splitpoint.compare`` has it, and tables give the worst over inputs and outputs, per
input family: natural inputs (random images, photo crops, token ids with a 0/1 padding
mask; batch 1 and batches of 3); split()'s golden inputs (``partitioner.golden``; its
integer inputs were drawn from [0, 10) when runtime_drift.md was recorded, and are 0 or 1
since, because of what that run showed); and, for the transformer, the same golden inputs
with the mask made 0/1.

The pretrained models are MTCNN's ONet and RNet (face detection; weights read from the
facenet-pytorch wheel, which is not installed) on windows of the photo shipped with matplotlib.

    python benchmarks/runtime_drift.py [--models resnet,onet] [--json drift.json]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import helper
from report import machine, print_table
from torch import nn

from partitioner import PartitionError, inspect, split
from partitioner.golden import sample_inputs
from partitioner.verify import edge_then_cloud
from splitpoint.backends import load_session
from splitpoint.compare import difference
from testbed import zoo
from testbed.models import save_demo_cnn

EPS = 2.0**-23  # float32 machine epsilon
Feeds = dict[str, np.ndarray]
FACENET_WHEEL = "facenet-pytorch==2.6.0"
# Each a stand-in for another CPU's kernel paths; set before torch is imported, so in a subprocess.
ISA_VARIANTS: list[dict[str, str]] = [
    {},  # the control: a subprocess with no cap must match this process bit for bit
    {"ATEN_CPU_CAPABILITY": "default"},
    {"ATEN_CPU_CAPABILITY": "avx2"},
    {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},  # MKL ignores it on AMD (bit-identical): its Intel paths stay out of reach
    {"MKL_CBWR": "COMPATIBLE"},  # MKL's portable code path; its other CBWR branches are Intel-only
    {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},  # an AVX2-only CPU, as far as can be emulated
    {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},  # the oldest paths
]
KINDS = [  # row order; the first two compare against the float64 truth, the rest are pairs of float32 runtimes
    "torch vs f64", "ort vs f64", "torch vs ort", "ort fused vs unfused", "ort threads", "torch threads",
    "batch 3 vs 1 (ort)", "batch 3 vs 1 (torch)", "split vs whole (ort)", "torch ISA vs torch", "torch ISA vs ort",
]
PAIR_KINDS = KINDS[2:]
THREADS = (1, 2, 8)  # intra-op threads compared: onnxruntime's against the first, torch's against its default
TAIL = 16.0  # eps: the summary counts the measurements beyond this


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env_label(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items()) or "no cap (control)"


# --- models ------------------------------------------------------------------------------------


class ONet(nn.Module):
    """MTCNN's output net, layer for layer as facenet-pytorch names it: 48x48 crop -> box, landmarks, face prob."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)


class RNet(nn.Module):
    """MTCNN's refine net: 24x24 crop -> box, face prob."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)


def mtcnn(cls: type[nn.Module], wheel: Path, weights: str) -> nn.Module:
    """``cls`` with the pretrained state dict ``weights`` read from inside the facenet-pytorch wheel."""
    with zipfile.ZipFile(wheel) as z:
        state = torch.load(io.BytesIO(z.read(f"facenet_pytorch/data/{weights}")), weights_only=True)
    module = cls()
    module.load_state_dict(state)
    return module.eval()


def photo_crops(size: int, count: int) -> list[Feeds]:
    """Square windows of matplotlib's Grace Hopper photo, as MTCNN's later stages see them: resized to
    ``size`` and normalised. The first two frame the face, the third the flag, the rest are seeded at random."""
    import matplotlib
    from PIL import Image

    image = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    boxes = [(165, 145, 365, 345), (185, 165, 345, 325), (0, 0, 160, 160)]  # left, top, right, bottom
    rng = np.random.default_rng(0)
    while len(boxes) < count:
        side = int(rng.integers(48, 300))
        left, top = int(rng.integers(0, image.width - side)), int(rng.integers(0, image.height - side))
        boxes.append((left, top, left + side, top + side))
    crops = [np.asarray(image.crop(b).resize((size, size), Image.BILINEAR), np.float32) for b in boxes[:count]]
    return [{"x": ((c - 127.5) * 0.0078125).transpose(2, 0, 1)[None].copy()} for c in crops]


def image_cases(count: int) -> list[Feeds]:
    return [{"x": np.random.default_rng(k).standard_normal((1, 3, 64, 64)).astype(np.float32)} for k in range(count)]


def token_cases(count: int) -> list[Feeds]:
    """Random ids of 64 tokens; the mask keeps a random 8 to 64 of them (0/1, as a tokenizer pads)."""
    cases = []
    for k in range(count):
        rng = np.random.default_rng(k)
        mask = np.ones((1, 64), np.int64)
        mask[0, rng.integers(8, 65):] = 0
        cases.append({"input_ids": rng.integers(0, 1000, (1, 64)), "attention_mask": mask})
    return cases


def export_images(module: nn.Module, path: Path, dynamo: bool, example: Feeds, outputs: Sequence[str]) -> Path:
    """Export a one-input model with every output named and the batch dynamic."""
    x = (torch.from_numpy(example["x"]),)
    names = {"input_names": ["x"], "output_names": list(outputs)}
    if dynamo:
        torch.onnx.export(module, x, path, dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                          verbose=False, **names)
    else:
        torch.onnx.export(module, x, path, dynamo=False, dynamic_axes={n: {0: "batch"} for n in ["x", *outputs]}, **names)
    return path


@dataclass(frozen=True)
class Spec:
    """A model: its torch module (None: ONNX only), ``count`` batch-1 inputs, output names and
    ONNX export (of the module given; ``True``: with the dynamo exporter)."""

    build: Callable[[], nn.Module] | None
    cases: Callable[[int], list[Feeds]]
    outputs: tuple[str, ...]
    onnx: Callable[[nn.Module | None, Path, bool], Path]
    exporters: tuple[str, ...] = ("legacy", "dynamo")

    def module(self) -> nn.Module:
        """The module, the same in every process: zoo models draw some weights before they seed."""
        assert self.build is not None
        torch.manual_seed(0)
        return self.build()


def specs(wheel: Callable[[], Path]) -> dict[str, Spec]:
    def mt(cls: type[nn.Module], weights: str, size: int, outputs: tuple[str, ...]) -> Spec:
        build = lambda: mtcnn(cls, wheel(), weights)  # noqa: E731
        cases = lambda n: photo_crops(size, n)  # noqa: E731
        onnx = lambda m, p, d: export_images(m, p, d, batch_of(cases(3)), outputs)  # noqa: E731
        return Spec(build, cases, outputs, onnx)

    return {
        "resnet": Spec(zoo.resnet_like, image_cases, ("logits",), lambda m, p, d: zoo.export_onnx(m, p, dynamo=d)),
        "mobilenet": Spec(zoo.mobilenet_v2_like, image_cases, ("logits",),
                          lambda m, p, d: zoo.export_onnx(m, p, dynamo=d)),
        "transformer": Spec(zoo.transformer_encoder_like, token_cases, ("logits",),
                            lambda m, p, d: zoo.export_transformer_onnx(m, p, dynamo=d)),
        "demo_cnn": Spec(None, lambda n: [{"image": c["x"]} for c in image_cases(n)], ("logits",),
                         lambda m, p, d: save_demo_cnn(p), exporters=("onnx.helper",)),
        "onet": mt(ONet, "onet.pt", 48, ("box", "landmarks", "prob")),
        "rnet": mt(RNet, "rnet.pt", 24, ("box", "prob")),
    }


def batch_of(cases: list[Feeds]) -> Feeds:
    return {name: np.concatenate([c[name] for c in cases]) for name in cases[0]}


def inputs_of(spec: Spec, natural: int, golden: int) -> dict[str, Feeds]:
    """``natural`` batch-1 inputs, each three of them as a batch, and ``golden`` inputs drawn as split()
    draws its golden cases (``partitioner.golden.sample_inputs``: N(0, 1) floats, integers in [0, 10)),
    and, for a model with an attention mask, those again with the mask made 0/1."""
    cases = spec.cases(natural)
    infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for n, v in cases[0].items()]
    shapes = {n: v.shape for n, v in cases[0].items()}
    drawn = {f"golden {k}": sample_inputs(infos, shapes, k) for k in range(golden)}
    masked = [n for n in shapes if "mask" in n]  # the control: the same golden inputs with masks made 0/1
    binary = {f"{k}, 0/1 mask": {n: (v > 0).astype(v.dtype) if n in masked else v for n, v in g.items()}
              for k, g in drawn.items()} if masked else {}
    return {**{f"input {k}": c for k, c in enumerate(cases)},
            **{f"batch {j}": batch_of(cases[3 * j:3 * j + 3]) for j in range(natural // 3)}, **drawn, **binary}


# --- runs --------------------------------------------------------------------------------------


def run_torch(module: nn.Module, feeds: Feeds, outputs: Sequence[str], dtype: torch.dtype = torch.float32) -> Feeds:
    args = [torch.from_numpy(v).to(dtype) if v.dtype.kind == "f" else torch.from_numpy(v) for v in feeds.values()]
    with torch.no_grad():
        out = module(*args)
    return {n: t.numpy() for n, t in zip(outputs, out if isinstance(out, tuple) else (out,))}


def ort_runner(path: Path, threads: int | None = None, optimize: bool = True) -> Callable[[Feeds], Feeds]:
    """The session splitpoint runs (``load_session``: all graph optimisations), or one with none."""
    if optimize:
        return load_session(path, threads=threads).run
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


def isa_outputs(models: dict[str, tuple[Spec, dict[str, Feeds]]], wheel: Path, tmp: Path) -> dict[str, dict]:
    """Per ISA variant: torch float32 outputs of every model from a subprocess under that cap."""
    np.savez(tmp / "inputs.npz", **{f"{m}|{i}|{n}": v for m, (_, ins) in models.items() for i, f in ins.items()
                                    for n, v in f.items()})
    results = {}
    for env in ISA_VARIANTS:
        log(f"torch under {env_label(env)}")
        out = tmp / "isa.npz"
        cmd = [sys.executable, __file__, "--child", str(tmp), "--models", ",".join(models), "--mtcnn-wheel", str(wheel)]
        subprocess.run(cmd, env={**os.environ, **env}, check=True)
        with np.load(out) as z:
            results[env_label(env)] = {k: z[k] for k in z.files}
    return results


def child(tmp: Path, names: list[str], wheel: Path) -> None:
    """The subprocess of ``isa_outputs``: run each model's torch module on the saved inputs."""
    table = specs(lambda: wheel)
    with np.load(tmp / "inputs.npz") as z:
        saved = {k: z[k] for k in z.files}
    out: dict[str, np.ndarray] = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
    for m in names:
        spec = table[m]
        module = spec.module()
        inputs: dict[str, Feeds] = {}
        for key, value in saved.items():
            model, case, name = key.split("|")
            if model == m:
                inputs.setdefault(case, {})[name] = value
        for case, feeds in inputs.items():
            out.update({f"{m}|{case}|{n}": v for n, v in run_torch(module, feeds, spec.outputs).items()})
    np.savez(tmp / "isa.npz", **out)


# --- measurement -------------------------------------------------------------------------------


class Record:
    """Every measurement: model, kind (a row group), detail (the row), case (what the row's worst is over)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, model: str, kind: str, detail: str, case: str, reference: Feeds, actual: Feeds, **extra: str) -> None:
        """One measurement per output; a float32 run against the float64 truth is compared in float64."""
        for n, ref in reference.items():
            d = difference({n: ref}, {n: actual[n].astype(ref.dtype)})
            self.put(model, kind, detail, case, d.exact, d.max_abs, d.max_rel, output=n, **extra)

    def put(self, model: str, kind: str, detail: str, case: str, exact: bool, max_abs: float, max_rel: float,
            **extra: str) -> None:
        self.rows.append({"model": model, "kind": kind, "detail": detail, "case": case, "exact": exact,
                          "max_abs": max_abs, "max_rel": max_rel, "eps": max_rel / EPS, **extra})


def pick_cuts(path: Path) -> list[list[str]]:
    """Two cuts, near a third and two thirds of the way through, each sending at most two tensors if possible."""
    candidates = inspect(path).candidates
    picked: list[list[str]] = []
    for f in (1 / 3, 2 / 3):
        c = min(candidates, key=lambda c: (len(c.names) > 2, abs(c.prefix_nodes / c.total_nodes - f)))
        if c.names not in picked:
            picked.append(c.names)
    return picked


def measure_split(rec: Record, model: str, exporter: str, path: Path, whole: dict[str, Feeds],
                  inputs: dict[str, Feeds], tmp: Path) -> None:
    for k, names in enumerate(pick_cuts(path)):
        detail, cut = f"{exporter}, cut {k + 1}", ",".join(names)
        log(f"{model}: {detail} at {cut}")
        try:
            bundle = split(path, tmp / f"split-{k}", at=[names])
        except PartitionError as e:  # split()'s own verification refused the cut: keep its figures
            m = re.search(r"max_abs=([^,\s]+), max_rel=([^,\s]+)", str(e))
            figures = (float(m[1]), float(m[2])) if m else (float("nan"), float("nan"))
            rec.put(model, "split vs whole (ort)", detail, "split()'s golden inputs", False, *figures, output="all",
                    cut=cut, refused=str(e))
            continue
        s = next(s for s in bundle.manifest.splits if s.edge_file and s.cloud_file)
        edge, cloud = load_session(bundle.path(s.edge_file)), load_session(bundle.path(s.cloud_file))
        for case, feeds in inputs.items():
            got = edge_then_cloud(edge, cloud, feeds)
            rec.add(model, "split vs whole (ort)", detail, case, whole[case], got, cut=cut)


def measure_model(rec: Record, model: str, spec: Spec, inputs: dict[str, Feeds], tmp: Path) -> tuple[dict, dict]:
    """Everything but the ISA variants; returns torch float32 outputs and onnxruntime's per exporter."""
    torch32: dict[str, Feeds] = {}
    truth: dict[str, Feeds] = {}
    module = None if spec.build is None else spec.module()
    if module is not None:
        module64 = copy.deepcopy(module).double()
        for case, feeds in inputs.items():
            torch32[case] = run_torch(module, feeds, spec.outputs)
            truth[case] = run_torch(module64, feeds, spec.outputs, torch.float64)
            rec.add(model, "torch vs f64", "torch", case, truth[case], torch32[case])
        batch_rows(rec, model, "batch 3 vs 1 (torch)", "torch", torch32)
        default_threads = torch.get_num_threads()
        for n in set(THREADS) - {default_threads}:
            for case, got in torch_threads(module, inputs, spec.outputs, n).items():
                rec.add(model, "torch threads", f"{default_threads} vs {n}", case, torch32[case], got)
    ort32: dict[str, dict[str, Feeds]] = {}
    for exporter in spec.exporters:
        log(f"{model}: onnxruntime, {exporter} export")
        path = tmp / model / f"{exporter}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            spec.onnx(module, path, exporter == "dynamo")
        except Exception as e:  # an exporter that cannot handle the model is a finding, not a crash
            rec.rows.append({"model": model, "kind": "export", "detail": exporter, "error": str(e).splitlines()[0]})
            continue
        default, plain, one = ort_runner(path), ort_runner(path, optimize=False), ort_runner(path, threads=1)
        threaded = {n: ort_runner(path, threads=n) for n in THREADS[1:]}
        runs = ort32[exporter] = {case: default(feeds) for case, feeds in inputs.items()}
        for case, feeds in inputs.items():
            if module is not None:
                rec.add(model, "ort vs f64", exporter, case, truth[case], runs[case])
                rec.add(model, "torch vs ort", exporter, case, torch32[case], runs[case])
            rec.add(model, "ort fused vs unfused", exporter, case, plain(feeds), runs[case])
            single = one(feeds)
            for n, run in threaded.items():
                rec.add(model, "ort threads", f"{exporter}, 1 vs {n}", case, single, run(feeds))
        batch_rows(rec, model, "batch 3 vs 1 (ort)", exporter, runs)
        log(f"{model}: splits of the {exporter} export")
        measure_split(rec, model, exporter, path, runs, inputs, tmp / model / exporter)
    return torch32, ort32


def torch_threads(module: nn.Module, inputs: dict[str, Feeds], outputs: Sequence[str], n: int) -> dict[str, Feeds]:
    """Torch float32 on ``n`` intra-op threads (more than the cores is fine: only the results count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return {case: run_torch(module, feeds, outputs) for case, feeds in inputs.items()}
    finally:
        torch.set_num_threads(before)


def batch_rows(rec: Record, model: str, kind: str, detail: str, runs: dict[str, Feeds]) -> None:
    """Row i of batch j against the batch-1 run of input 3j + i."""
    for case, batch in runs.items():
        if case.startswith("batch "):
            j = int(case.split()[1])
            for i in range(3):
                row = {n: v[i:i + 1] for n, v in batch.items()}
                rec.add(model, kind, detail, f"input {3 * j + i}", runs[f"input {3 * j + i}"], row)


def isa_rows(rec: Record, model: str, spec: Spec, torch32: dict[str, Feeds], ort32: dict[str, dict[str, Feeds]],
             isa: dict[str, dict]) -> None:
    for variant, outs in isa.items():
        for case in torch32:
            capped = {n: outs[f"{model}|{case}|{n}"] for n in spec.outputs}
            rec.add(model, "torch ISA vs torch", variant, case, torch32[case], capped)
            for exporter, runs in ort32.items():
                rec.add(model, "torch ISA vs ort", variant, f"{exporter}, {case}", runs[case], capped)


# --- report ------------------------------------------------------------------------------------


def worst(measured: list[dict]) -> dict | None:
    return max(measured, key=lambda r: r["max_rel"]) if measured else None


def group(case: str) -> str:
    """Which inputs a measurement is on: natural ones, split()'s golden ones, or those with 0/1 masks."""
    return "natural" if "golden" not in case else "golden, 0/1 mask" if "0/1" in case else "golden"


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["exact"]:
        return "0 (exact)"
    return f"{r['eps']:.1f} ({r['max_rel']:.2g}){' refused' if 'refused' in r else ''}"


def report(rows: list[dict], models: list[str]) -> None:
    measured = [r for r in rows if "max_rel" in r]
    groups = list(dict.fromkeys(group(r["case"]) for r in measured))
    keys = sorted(dict.fromkeys((r["kind"], r["detail"]) for r in measured), key=lambda k: KINDS.index(k[0]))
    for g in groups:
        mine = [r for r in measured if group(r["case"]) == g]
        cols = [m for m in models if any(r["model"] == m for r in mine)]
        print(f"\n{g} inputs: eps (max_rel), the worst over inputs and outputs"
              f"{'; refused: split() refused the cut' if any('refused' in r for r in mine) else ''}\n")
        table = [[kind, detail, *(cell(worst([r for r in mine if (r["kind"], r["detail"], r["model"]) == (kind, detail, m)]))
                                  for m in cols)] for kind, detail in keys]
        print_table(["comparison", "detail", *cols], [t for t in table if set(t[2:]) != {"-"}])
    print(f"\nworst per comparison and inputs; the share of measurements (input x output) over {TAIL:g} eps:\n")
    summary = []
    for kind in KINDS:
        for g in groups:
            mine = [r for r in measured if r["kind"] == kind and group(r["case"]) == g]
            w = worst(mine)
            if w is not None:
                where = f"{w['model']}: {w['detail']}, {w['case']}, {w.get('output', '')}"
                summary.append([kind, g, f"{w['eps']:.1f}", f"{w['max_rel']:.3g}", where,
                                f"{sum(r['eps'] > TAIL for r in mine)}/{len(mine)}"])
    print_table(["comparison", "inputs", "eps", "max_rel", "where", f"> {TAIL:g} eps"], summary)
    for g in groups:
        w = worst([r for r in measured if r["kind"] in PAIR_KINDS and group(r["case"]) == g])
        print(f"\nworst drift between two float32 runtimes on {g} inputs: {w['eps']:.1f} eps (max_rel {w['max_rel']:.3g}), "
              f"{w['model']}, {w['kind']}, {w['detail']}, {w['case']}, {w.get('output', '')}")
    for r in rows:
        if "error" in r:
            print(f"\n{r['model']}: the {r['detail']} exporter failed: {r['error']}")


def fetch_wheel(tmp: Path) -> Path:
    log(f"downloading {FACENET_WHEEL} (for MTCNN's weights; not installed)")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", FACENET_WHEEL, "-d", str(tmp)], check=True)
    return next(tmp.glob("facenet_pytorch-*.whl"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,mobilenet,transformer,demo_cnn,onet,rnet",
                   help="comma-separated, of: resnet, mobilenet, transformer, demo_cnn, onet, rnet (default: all)")
    p.add_argument("--mtcnn-wheel", type=Path,
                   help=f"the {FACENET_WHEEL} wheel (default: pip download it into a temporary directory)")
    p.add_argument("--inputs", type=int, default=240,
                   help="natural batch-1 inputs per model, also run as batches of 3 (default: 240)")
    p.add_argument("--golden", type=int, default=240,
                   help="inputs drawn as split()'s golden cases, beside the natural ones (default: 240)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the ISA subprocess, see isa_outputs
    args = p.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    names = args.models.split(",")
    if unknown := set(names) - set(specs(Path)):
        p.error(f"--models: no model {', '.join(sorted(unknown))}")
    if args.child is not None:
        return child(args.child, names, args.mtcnn_wheel)
    with tempfile.TemporaryDirectory(prefix="splitpoint-drift-") as tmp_name:
        tmp = Path(tmp_name)
        wheel = args.mtcnn_wheel
        if wheel is None and {"onet", "rnet"} & set(names):
            wheel = fetch_wheel(tmp)
        table = specs(lambda: wheel)
        rec = Record()
        models = {m: (table[m], inputs_of(table[m], args.inputs, args.golden)) for m in names}
        results = {}
        for m, (spec, inputs) in models.items():
            log(f"{m}: torch float32 and float64")
            results[m] = measure_model(rec, m, spec, inputs, tmp)
        torch_models = {m: v for m, v in models.items() if v[0].build is not None}
        isa = isa_outputs(torch_models, wheel or Path(), tmp) if torch_models else {}
        capabilities = {variant: str(outs.pop("capability")) for variant, outs in isa.items()}
        for m, (spec, _) in torch_models.items():
            isa_rows(rec, m, spec, *results[m], isa)
    print(f"machine: {machine()}; {cpu_model()}; torch {torch.__version__}, onnxruntime {ort.__version__}\n")
    print("command: .venv/bin/python benchmarks/runtime_drift.py " + " ".join(sys.argv[1:]) + "\n")
    report(rec.rows, names)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "cpu": cpu_model(), "torch": torch.__version__,
                                         "onnxruntime": ort.__version__, "eps": EPS,
                                         "aten_capability_per_variant": capabilities, "rows": rec.rows}))


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX-512, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name} ({'AVX-512' if 'avx512f' in info else 'no AVX-512'})"


if __name__ == "__main__":
    main()

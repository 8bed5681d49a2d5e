"""Fuzzing bundles: every broken manifest or file is one clear SplitpointError, on the edge and in ``splitpoint serve``.

Hypothesis rewrites the demo bundle's manifest (any subtree replaced by any
JSON value, keys dropped, file fields pointed at ``..``, absolute paths, NUL
bytes, directories, other files): ``Bundle`` raises BundleError or loads a
manifest whose names are model-name-safe and whose every file lies inside the
bundle, and ``EdgeRuntime`` then opens it or raises a SplitpointError. A table
of named faults (missing files, paths outside the bundle, symlinks out, wrong
hashes, truncated ONNX, garbage JSON, segments that do not match the manifest)
checks the message of each, and that ``splitpoint serve`` refuses the same
bundles with one ``error:`` line naming the problem (exit 2, no traceback), or
serves when the fault is only on the edge's side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import EdgeRuntime
from splitpoint.bundle import MANIFEST, Bundle
from splitpoint.errors import BundleError, SplitpointError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
PATHS = st.sampled_from([
    "../model.onnx", "../../../../etc/passwd", "/etc/passwd", "edge/../../outside.onnx", "", ".", "edge", "edge/",
    "edge/\x00.onnx", "golden/inputs_0.npz", "manifest.json", "cloud/missing.onnx", "loop.onnx", "out.onnx",
    "model.onnx", "x" * 5000,
])
FILE_KEYS = {"edge_file", "cloud_file", "model_file", "inputs", "outputs"}  # golden cases hold paths under the last two


def _locations(tree: object, at: tuple = ()) -> list[tuple]:
    """Every key path in a JSON tree."""
    out = [at]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _locations(v, (*at, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _locations(v, (*at, i))
    return out


@st.composite
def broken_manifests(draw, original: dict) -> dict:
    """``original`` with one to three edits: a subtree replaced or removed, or a path made hostile."""
    tree = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(_locations(tree)[1:]))
        parent = tree
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        how = draw(st.sampled_from(["replace", "path", "drop"] if isinstance(parent, dict) else ["replace", "path"]))
        if how == "drop":
            del parent[last]
        else:
            parent[last] = draw(PATHS if how == "path" or last in FILE_KEYS else JSON)
    return tree


@pytest.fixture(scope="module")
def original(demo_bundle) -> dict:
    return json.loads((demo_bundle / MANIFEST).read_text())


@pytest.fixture(scope="module")
def scratch(demo_bundle, tmp_path_factory) -> Path:
    """A copy of the demo bundle with traps beside it: a symlink loop and a symlink out of the bundle."""
    root = tmp_path_factory.mktemp("fuzzed") / "bundle"
    shutil.copytree(demo_bundle, root)
    (root / "loop.onnx").symlink_to("loop.onnx")
    (root / "out.onnx").symlink_to(demo_bundle / "model.onnx")
    return root


def _inside(root: Path, rel: str) -> bool:
    p = (root / rel).resolve()
    return p.is_relative_to(root.resolve()) and p.is_file()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_broken_manifests_are_one_bundle_error_or_a_sound_bundle(data, original, scratch):
    manifest = data.draw(broken_manifests(original))
    (scratch / MANIFEST).write_text(json.dumps(manifest))
    try:
        bundle = Bundle(scratch)
    except BundleError as e:
        assert str(e) and "\n" not in str(e) and "Traceback" not in str(e)
        return
    m = bundle.manifest
    assert all(isinstance(x, str) and "/" not in x and not x.startswith(".") for x in [m.name, *(s.id for s in m.splits)])
    for s in m.splits:
        for rel in (s.edge_file, s.cloud_file):
            assert rel is None or _inside(scratch, rel), rel
    try:
        with EdgeRuntime(scratch, split=m.default_split, cloud="127.0.0.1:9", deadline_ms=50):
            pass
    except SplitpointError as e:
        assert str(e) and "Traceback" not in str(e)


# -- named faults: the edge and the worker -----------------------------------------------------------


def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        m = json.loads((root / MANIFEST).read_text())
        change(m)
        (root / MANIFEST).write_text(json.dumps(m))

    return apply


def _truncate(rel: str, keep: int = 200) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        p = root / rel
        p.write_bytes(p.read_bytes()[:keep])

    return apply


def _symlink_out(rel: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        outside = root.parent / "outside.onnx"
        shutil.copyfile(root / rel, outside)
        (root / rel).unlink()
        (root / rel).symlink_to(outside)

    return apply


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def _split(index: int, **fields) -> Callable[[Path], None]:
    return _edit(lambda m: m["splits"][index].update(fields))


@dataclass(frozen=True)
class Fault:
    """A way to break a bundle, the text its error must hold, and whether the worker (which loads only cloud files) sees it."""

    apply: Callable[[Path], None]
    needle: str
    worker_refuses: bool = True


CUT = 0  # the demo bundle's first split: the two-tensor cut, with an edge and a cloud file
FAULTS = {
    "garbage-json": Fault(lambda r: (r / MANIFEST).write_bytes(b"{\"name\": \xff\xfe"), "not valid JSON"),
    "deep-json": Fault(lambda r: (r / MANIFEST).write_text("[" * 100_000 + "]" * 100_000), "not valid JSON"),
    "json-array": Fault(lambda r: (r / MANIFEST).write_text("[]"), "expected a JSON object"),
    "no-manifest": Fault(_remove(MANIFEST), "no manifest.json"),
    "missing-cloud-file": Fault(_remove("cloud/block.relu1_stem.relu.onnx"), "'cloud/block.relu1_stem.relu.onnx' is missing"),
    "missing-edge-file": Fault(_remove("edge/block.relu1_stem.relu.onnx"), "'edge/block.relu1_stem.relu.onnx' is missing"),
    "dotdot-path": Fault(_split(CUT, cloud_file="../../../etc/passwd"), "points outside the bundle"),
    "absolute-path": Fault(_split(CUT, edge_file="/etc/passwd"), "points outside the bundle"),
    "nul-in-path": Fault(_split(CUT, cloud_file="cloud/\x00.onnx"), "cannot be resolved"),
    "symlink-loop": Fault(lambda r: (_remove("cloud/pool.out.onnx")(r), (r / "cloud/pool.out.onnx").symlink_to("pool.out.onnx")),
                          "cannot be resolved"),  # regression: RuntimeError from Path.resolve on Python 3.11
    "file-name-too-long": Fault(_split(CUT, cloud_file="x" * 5000), "cannot be resolved"),  # regression: OSError
    "path-not-a-string": Fault(_split(CUT, cloud_file=["cloud", "x.onnx"]), "cloud_file of split"),
    "directory-as-file": Fault(_split(CUT, cloud_file="cloud"), "'cloud' is missing"),
    "symlink-out-cloud": Fault(_symlink_out("cloud/block.relu1_stem.relu.onnx"), "points outside the bundle"),
    "symlink-out-model": Fault(_symlink_out("model.onnx"), "points outside the bundle"),  # the "cloud" split serves it
    "name-with-dotdot": Fault(_edit(lambda m: m.update(name="../../victim")), "not a model-name-safe slug"),
    "split-id-with-slash": Fault(_split(CUT, id="a/../../b"), "not a model-name-safe slug"),
    "default-split-unknown": Fault(_edit(lambda m: m.update(default_split="nope")), "default split 'nope'"),
    "sha-not-hex": Fault(_edit(lambda m: m.update(model_sha256="../x")), "not 64 lowercase hex digits"),
    "wrong-model-sha": Fault(_edit(lambda m: m.update(model_sha256="0" * 64)), "the model file was replaced or damaged"),
    "model-replaced": Fault(lambda r: shutil.copyfile(r / "edge/pool.out.onnx", r / "model.onnx"),
                            "the model file was replaced or damaged"),
    "truncated-cloud-onnx": Fault(_truncate("cloud/block.relu1_stem.relu.onnx"), "onnxruntime cannot load it"),
    "truncated-edge-onnx": Fault(_truncate("edge/block.relu1_stem.relu.onnx"), "onnxruntime cannot load it",
                                 worker_refuses=False),
    "swapped-segments": Fault(_split(CUT, edge_file="cloud/block.relu1_stem.relu.onnx"), "does not match its segments",
                              worker_refuses=False),
    "cut-tensor-not-made": Fault(_edit(lambda m: m["splits"][CUT]["cut"][0].update(name="ghost")), "['ghost']",
                                 worker_refuses=False),
    "shape-not-a-list": Fault(_edit(lambda m: m["inputs"][0].update(shape="N,3,64,64")), "shape of tensor 'image'"),
}


@pytest.fixture(scope="module")
def broken(demo_bundle, tmp_path_factory) -> dict[str, Path]:
    """One broken copy of the demo bundle per fault."""
    out = {}
    for name, fault in FAULTS.items():
        root = tmp_path_factory.mktemp(name) / "bundle"
        shutil.copytree(demo_bundle, root)
        _edit(lambda m: m.update(name="broken"))(root)  # served beside the demo bundle: another model name
        fault.apply(root)
        out[name] = root
    return out


def _edge_error(root: Path) -> str:
    with pytest.raises(SplitpointError) as info:
        with EdgeRuntime(root, cloud="127.0.0.1:9", deadline_ms=50):
            pass
    return str(info.value)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_broken_bundle_is_one_clear_error_on_the_edge(broken, fault):
    message = _edge_error(broken[fault])
    assert FAULTS[fault].needle in message and "Traceback" not in message, message
    assert str(broken[fault]) in message or "manifest is malformed" in message or ".onnx" in message, message


def test_serve_refuses_each_bundle_broken_on_its_side_with_one_line(broken, demo_bundle, capsys):
    """Served after a good bundle, each bad one stops the start with one error line naming it: nothing is half-served.

    In process (the CLI's own ``main``): refusals come before any port is opened.
    """
    from splitpoint.cli import main

    for name, fault in FAULTS.items():
        if fault.worker_refuses:
            assert main(["serve", str(demo_bundle), str(broken[name]), "--port", "0"]) == 2, name
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1 and fault.needle in err, (name, err)


@pytest.mark.parametrize("fault", ["dotdot-path", "truncated-cloud-onnx"])
def test_serve_process_refuses_with_one_line_and_exit_2(broken, demo_bundle, fault):
    run = subprocess.run([sys.executable, "-m", "splitpoint", "serve", str(demo_bundle), str(broken[fault]), "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert FAULTS[fault].needle in run.stderr and str(broken[fault]) in run.stderr and "listening" not in run.stdout


def test_serve_serves_bundles_whose_faults_are_only_on_the_edge(broken, worker_factory):
    """The worker loads only cloud segments: a bad prefix, or a manifest cut its segments do not make, does not stop it."""
    edge_only = [broken[name] for name in ("truncated-edge-onnx", "cut-tensor-not-made")]
    for root in edge_only:  # different names: the worker refuses to serve one model name twice
        m = json.loads((root / MANIFEST).read_text())
        (root / MANIFEST).write_text(json.dumps(m | {"name": f"cnn-{root.parent.name[:8]}"}))
    w = worker_factory(*edge_only)
    assert w.proc.poll() is None and "serving 6 model(s)" in w.log_text()


def test_a_symlinked_segment_inside_the_bundle_is_fine(demo_bundle, tmp_path):
    """Confinement refuses what resolves outside, not symlinks as such."""
    root = tmp_path / "bundle"
    shutil.copytree(demo_bundle, root)
    seg = root / "cloud/pool.out.onnx"
    os.rename(seg, root / "pool-copy.onnx")
    seg.symlink_to(root / "pool-copy.onnx")
    assert Bundle(root).path("cloud/pool.out.onnx") == (root / "pool-copy.onnx").resolve()

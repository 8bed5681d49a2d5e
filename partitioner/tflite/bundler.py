"""``split`` for .tflite models: cut the flatbuffer at the requested places and write a verified bundle.

The steps and the bundle are those of ``partitioner.bundler`` (whose cut
parsing, split ids and trivial splits are reused); what differs is the
format: segments are .tflite flatbuffers cut from the main subgraph, golden
outputs and verification come from LiteRT, and the full model is copied into
the bundle byte for byte.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from partitioner.bundler import AUTO, _distinct, _trivial_splits, _with_ids, cut_requests
from partitioner.candidates import auto_candidate, describe_candidates
from partitioner.cuts import Cut, candidate_cuts, resolve_cut
from partitioner.errors import PartitionError
from partitioner.golden import Tensors, write_golden
from partitioner.measure import TensorTable
from partitioner.staging import check_target, staged_directory
from partitioner.tflite.flatbuffer import serialize
from partitioner.tflite.measure import measure
from partitioner.tflite.segment import extract
from partitioner.tflite.source import TfliteSource
from partitioner.tflite.verify import verify_split
from partitioner.tflite.view import with_constants
from splitpoint import codec as codec_mod
from splitpoint.bundle import DEFAULT_CODEC, Bundle, Manifest, Split, file_sha256, slug, write_manifest

MODEL_FILE = "model.tflite"


def split(
    model: str | Path,
    out: str | Path,
    at: str | Sequence[str] | Sequence[Sequence[str]] = AUTO,
    shapes: Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
    codec: str = DEFAULT_CODEC,
    golden: int = 2,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Bundle:
    """Split the .tflite ``model`` at each cut in ``at`` and write the verified bundle to ``out``."""
    log = log or (lambda _: None)
    out = Path(out)
    if golden < 1:
        raise PartitionError(f"golden={golden}: at least one golden case is needed to verify the splits")
    check_target(out, overwrite)
    codec = codec_mod.parse(codec).spec
    requests = cut_requests(at)
    log(f"loading {model}")
    source = TfliteSource.open(model, shapes, log)
    view = source.view
    named = {i: resolve_cut(view, names) for i, names in enumerate(requests) if names is not None}
    candidates = candidate_cuts(view) if None in requests else []

    log(f"running the full model on {golden} golden input(s) in LiteRT")
    cases = source.golden_cases(golden)
    log("measuring tensor sizes")
    sent = [t for cut in [*named.values(), *candidates] for t in cut.sent]
    table = measure(source, [*view.inputs, *view.outputs, *sent], {**cases[0][0], **cases[0][1]})
    if None in requests:
        chosen = auto_candidate(describe_candidates(candidates, table, source.compute_nodes))
        edge_share = f"{chosen.prefix_nodes}/{chosen.total_nodes} operators on the edge"
        log(f"auto: cut at {chosen.at} ({chosen.bytes:,} bytes, {edge_share})")
        auto_cut = resolve_cut(view, chosen.names)
    cuts = _distinct([auto_cut if names is None else named[i] for i, names in enumerate(requests)], log)

    with staged_directory(out, overwrite) as root:
        splits = [_write_split(source, table, cut, split_id, root, cases, log) for cut, split_id in _with_ids(cuts)]
        log(f"writing the bundle to {out}")
        shutil.copyfile(source.path, root / MODEL_FILE)
        manifest = Manifest(
            name=slug(name or source.path.stem),
            model_sha256=file_sha256(root / MODEL_FILE),
            opset=source.model.version,  # the TFLite schema version
            inputs=tuple(table.spec(t) for t in view.inputs),
            outputs=tuple(table.spec(t) for t in view.outputs),
            splits=(*splits, *_trivial_splits(table, view.inputs, source.compute_nodes, MODEL_FILE)),
            default_split=splits[0].id,
            codec=codec,
            model_file=MODEL_FILE,
            golden=write_golden(root, cases),
        )
        write_manifest(root, manifest)
    return Bundle(out)


def _write_split(
    source: TfliteSource,
    table: TensorTable,
    cut: Cut,
    split_id: str,
    root: Path,
    cases: list[tuple[Tensors, Tensors]],
    log: Callable[[str], None],
) -> Split:
    view = source.view
    log(f"extracting split {split_id}: sends {', '.join(cut.sent)}")
    prefix_reads = set(view.needs(cut.prefix))
    edge_inputs = [t for t in view.inputs if t in prefix_reads]
    edge_outputs = [t for t in cut.sent if t in view.producer] + [o for o in cut.edge_outputs if o not in cut.sent]
    cloud_outputs = [o for o in view.outputs if o not in cut.edge_outputs]
    edge_file, cloud_file = f"edge/{split_id}.tflite", f"cloud/{split_id}.tflite"
    for rel, ops, inputs, outputs in (
        (edge_file, cut.prefix, edge_inputs, edge_outputs),
        (cloud_file, cut.suffix, cut.sent, cloud_outputs),
    ):
        indices = [list(map(source.index, names)) for names in (inputs, outputs)]
        segment = extract(source.model, source.keys, with_constants(view, ops), *indices)
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(serialize(segment))
    log(f"verifying split {split_id} on {len(cases)} golden input(s) in LiteRT")
    verification = verify_split(split_id, root / edge_file, root / cloud_file, cases)
    log(f"split {split_id}: " + ("bit-exact" if verification["exact"] else f"max_rel {verification['max_rel']:.3g}"))
    return Split(
        id=split_id,
        cut=tuple(table.spec(t) for t in cut.sent),
        edge_file=edge_file,
        cloud_file=cloud_file,
        edge_outputs=cut.edge_outputs,
        edge_nodes=len(cut.prefix),
        cloud_nodes=len(cut.suffix),
        verification=verification,
    )

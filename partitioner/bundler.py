"""``split``: cut a model at the requested places and write a verified bundle.

Every split is extracted, checked by onnx and verified against the full model
on the golden inputs before the bundle directory appears; if any fails, nothing
is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from partitioner import extract, onnxio
from partitioner.candidates import auto_candidate, describe_candidates
from partitioner.cuts import Cut, candidate_cuts, resolve_cut
from partitioner.errors import PartitionError
from partitioner.golden import Tensors, write_golden
from partitioner.measure import TensorTable, measure
from partitioner.pricing import Pricing, ProfileArg
from partitioner.search import Region, pareto
from partitioner.source import Source
from partitioner.staging import check_target, staged_directory
from partitioner.tflite import is_tflite
from partitioner.verify import verify_split
from splitpoint import codec as codec_mod
from splitpoint.bundle import CLOUD, DEFAULT_CODEC, LOCAL, Bundle, Manifest, Split, file_sha256, slug, write_manifest

AUTO = "auto"
DEFAULT_RTT_MS = 20.0  # for --candidates auto
DEFAULT_BANDWIDTH_BPS = 10e6  # the default split of a --candidates auto bundle is the fastest here
MODEL_FILE = "model.onnx"
CutRequest = list[str] | None  # tensor names, or None for the automatic choice


def cut_requests(at: str | Sequence[str] | Sequence[Sequence[str]]) -> list[CutRequest]:
    """Normalize ``at``: ``"auto"``; one cut (``"a,b"`` or ``["a", "b"]``); or several (``[["a"], "b,c", "auto"]``).

    A list of strings is one cut unless one of them is ``"auto"``, in which case
    each string is a cut of its own (as repeated ``--at`` options give them).
    """
    if isinstance(at, str):
        return [_parse(at)]
    items = list(at)
    if not items:
        raise PartitionError("no cut given: name tensors or use 'auto'")
    if all(isinstance(item, str) for item in items) and AUTO not in items:
        return [_parse(",".join(items))]  # type: ignore[arg-type]
    return [_parse(item if isinstance(item, str) else ",".join(item)) for item in items]


def _parse(text: str) -> CutRequest:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise PartitionError(f"empty cut {text!r}: name at least one tensor")
    return None if names == [AUTO] else names


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
    candidates: str | None = None,
    edge_profile: ProfileArg = None,
    cloud_profile: ProfileArg = None,
    rtt_ms: float = DEFAULT_RTT_MS,
) -> Bundle:
    """Split ``model`` at each cut in ``at`` and write the verified bundle to ``out``.

    ``candidates="auto"`` adds every split that is the fastest for some bandwidth
    from 0.1 to 1000 Mbit/s at ``rtt_ms``, priced from the edge and cloud
    profiles (measured on this machine when not given); ``at=None`` then asks
    for those only. Whenever splits are priced, each one's ``predicted`` cost is
    in the manifest and the profiles are copied into the bundle.
    """
    priced = candidates is not None or edge_profile is not None or cloud_profile is not None
    if is_tflite(model):
        if priced:
            raise PartitionError("--candidates and profiles are not supported for TFLite models yet")
        from partitioner.tflite.bundler import split as split_tflite  # it reuses this module's helpers

        return split_tflite(model, out, at, shapes, name, codec, golden, overwrite, log)
    log = log or (lambda _: None)
    out = Path(out)
    if golden < 1:
        raise PartitionError(f"golden={golden}: at least one golden case is needed to verify the splits")
    if candidates not in (None, AUTO):
        raise PartitionError(f"--candidates {candidates}: the only choice is 'auto'")
    if at is None and candidates is None:
        raise PartitionError("no cut given: name tensors with --at, or use --candidates auto")
    if rtt_ms < 0:
        raise PartitionError(f"--rtt-ms {rtt_ms:g}: must not be negative")
    check_target(out, overwrite)
    codec = codec_mod.parse(codec).spec  # a bad --codec fails before any work
    requests = cut_requests(at) if at is not None else []
    log(f"loading {model}")
    source = Source.open(model, shapes, log)
    view = source.view
    named = {i: resolve_cut(view, names) for i, names in enumerate(requests) if names is not None}
    sweep_cuts = candidate_cuts(view) if None in requests else []
    pricing = Pricing.of(source, edge_profile, cloud_profile, codec, log) if priced else None
    for note in pricing.notes if pricing else []:
        log(f"note: {note}")
    regions = _pareto_regions(pricing, rtt_ms, log) if pricing is not None and candidates is not None else []
    pareto_cuts = [resolve_cut(view, r.choice.at) for r in regions if r.choice.at]

    log(f"running the full model on {golden} golden input(s)")
    cases = _golden_cases(source, golden)
    log("measuring tensor sizes")
    sent = [t for cut in [*named.values(), *sweep_cuts, *pareto_cuts] for t in cut.sent]
    first_run = {**cases[0][0], **cases[0][1]}
    table = measure(source.model, view, [*view.inputs, *view.outputs, *sent], source.input_shapes, first_run, log)
    if None in requests:
        chosen = auto_candidate(describe_candidates(sweep_cuts, table, source.compute_nodes))
        log(f"auto: cut at {chosen.at} ({chosen.bytes:,} bytes, {chosen.prefix_nodes}/{chosen.total_nodes} nodes on the edge)")
        auto_cut = resolve_cut(view, chosen.names)
    cuts = _distinct([auto_cut if names is None else named[i] for i, names in enumerate(requests)] + pareto_cuts, log)

    with staged_directory(out, overwrite) as root:
        splits = [_write_split(source, table, cut, split_id, root, cases, log) for cut, split_id in _with_ids(cuts)]
        trivial = _trivial_splits(table, view.inputs, source.compute_nodes)
        default = splits[0].id if requests else _default_candidate(regions, splits)
        if pricing is not None:
            splits = [_priced(pricing, s, cut.prefix) for s, cut in zip(splits, cuts)]
            trivial = _priced(pricing, trivial[0], pricing.cost_model.nodes), _priced(pricing, trivial[1], frozenset())
        log(f"writing the bundle to {out}")
        model_files = onnxio.save_model(source.model, root / MODEL_FILE)
        manifest = Manifest(
            name=slug(name or source.path.stem),
            model_sha256=file_sha256(*model_files),
            opset=next((o.version for o in source.model.opset_import if o.domain in ("", "ai.onnx")), 0),
            inputs=tuple(table.spec(t) for t in view.inputs),
            outputs=tuple(table.spec(t) for t in view.outputs),
            splits=(*splits, *trivial),
            default_split=default,
            codec=codec,
            model_file=MODEL_FILE,
            golden=write_golden(root, cases),
            profiles=pricing.save_profiles(root) if pricing is not None else (),
        )
        write_manifest(root, manifest)
    return Bundle(out)


def _pareto_regions(pricing: Pricing, rtt_ms: float, log: Callable[[str], None]) -> list[Region]:
    """The splits that are fastest for some bandwidth from 0.1 to 1000 Mbit/s, logged with where they win."""
    regions = pareto(pricing.cost_model, rtt_ms)
    for r in regions:
        log(f"candidate {r.choice.id}: fastest from {r.low_bps / 1e6:.3g} to {r.high_bps / 1e6:.3g} Mbit/s "
            f"at RTT {rtt_ms:g} ms")
    return regions


def _default_candidate(regions: list[Region], splits: list[Split]) -> str:
    """Without ``--at``: the split fastest at 10 Mbit/s."""
    winner = next(r.choice for r in regions if r.low_bps <= DEFAULT_BANDWIDTH_BPS <= r.high_bps)
    if not winner.at:
        return winner.id  # local or cloud
    return next(s.id for s in splits if set(s.sent_names) == set(winner.sent))


def _priced(pricing: Pricing, split: Split, prefix: frozenset[int]) -> Split:
    """``split`` with its predicted cost (none if the codec cannot send what it sends)."""
    try:
        return replace(split, predicted=pricing.cost_model.cost(prefix).to_json())
    except PartitionError:
        return split


def _golden_cases(source: Source, count: int) -> list[tuple[Tensors, Tensors]]:
    sess = onnxio.session(source.model, str(source.path))
    names = [o.name for o in sess.get_outputs()]
    cases = []
    for k in range(count):
        inputs = source.sample(k)
        try:
            outputs = sess.run(names, inputs)
        except Exception as e:  # onnxruntime's own exception types
            raise PartitionError(f"{source.path} fails in onnxruntime on golden input {k}: {str(e).splitlines()[0]}") from None
        cases.append((inputs, {n: np.asarray(v) for n, v in zip(names, outputs)}))
    return cases


def _distinct(cuts: list[Cut], log: Callable[[str], None]) -> list[Cut]:
    """Each cut once (two requests may send the same tensors); logs what is sent beyond the names."""
    kept: dict[frozenset[str], Cut] = {}
    for cut in cuts:
        key = frozenset(cut.sent)
        if key in kept:
            log(f"cut {','.join(cut.named)} sends the same tensors as {','.join(kept[key].named)}; kept once")
            continue
        kept[key] = cut
        if cut.added_inputs:
            inputs = ", ".join(cut.added_inputs)
            log(f"cut {','.join(cut.named)}: the cloud side also reads graph input(s) {inputs}; sending them")
        unused = [n for n in cut.named if n not in cut.sent]
        if unused:
            log(f"cut {','.join(cut.named)}: {', '.join(unused)} not needed by the cloud side; not sent")
    return list(kept.values())


def _with_ids(cuts: list[Cut]) -> list[tuple[Cut, str]]:
    """Split ids from the sent tensor names, unique within the bundle and apart from local/cloud."""
    taken = {LOCAL, CLOUD}
    named = []
    for cut in cuts:
        base = candidate = slug("+".join(cut.sent))
        n = 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        taken.add(candidate)
        named.append((cut, candidate))
    return named


def _write_split(
    source: Source,
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
    edge_inputs = [vi for vi in view.input_infos if vi.name in prefix_reads]
    edge_outputs = [t for t in cut.sent if t in view.producer] + [o for o in cut.edge_outputs if o not in cut.sent]
    cloud_outputs = [o for o in view.outputs if o not in cut.edge_outputs]
    edge_file, cloud_file = f"edge/{split_id}.onnx", f"cloud/{split_id}.onnx"
    for rel, nodes, inputs, outputs in (
        (edge_file, cut.prefix, edge_inputs, [table.value_info(t) for t in edge_outputs]),
        (cloud_file, cut.suffix, [table.value_info(t) for t in cut.sent], [table.value_info(t) for t in cloud_outputs]),
    ):
        segment = extract.extract_segment(source.model, view, nodes, inputs, outputs, f"{split_id}.{rel.split('/')[0]}")
        (root / rel).parent.mkdir(exist_ok=True)
        onnxio.save_model(segment, root / rel)
        onnxio.check_model_file(root / rel, f"the {rel.split('/')[0]} segment of split {split_id!r}")
    log(f"verifying split {split_id} on {len(cases)} golden input(s)")
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


def _trivial_splits(
    table: TensorTable, inputs: list[str], total_nodes: int, model_file: str = MODEL_FILE
) -> tuple[Split, Split]:
    local = Split(id=LOCAL, cut=(), edge_file=None, cloud_file=None, edge_nodes=total_nodes)
    cloud = Split(
        id=CLOUD, cut=tuple(table.spec(t) for t in inputs), edge_file=None, cloud_file=model_file, cloud_nodes=total_nodes
    )
    return local, cloud

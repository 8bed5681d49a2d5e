"""``split``: cut a model at the requested places and write a verified bundle.

One flow for every model format; what differs between ONNX and TFLite (golden
cases, measuring, segment files, the full model's copy) is the format's (see
``partitioner.formats``). Every split is extracted, checked and verified
against the full model on the golden inputs before the bundle directory
appears; if any fails, nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from partitioner.calibration import CalibrationArg, Calibrator, SplitChecker, Threshold, load_calibrator
from partitioner.candidates import auto_candidate, describe_candidates
from partitioner.cuts import Cut, candidate_cuts, resolve_cut
from partitioner.errors import PartitionError
from partitioner.formats import ModelFormat, format_of, write_segments
from partitioner.golden import Tensors, write_golden
from partitioner.measure import TensorTable
from partitioner.pricing import Pricing, ProfileArg
from partitioner.search import Constraints, Region, pareto
from partitioner.staging import check_target, staged_directory
from partitioner.verify import load_segment, verify_split
from splitpoint import codec as codec_mod
from splitpoint import defaults
from splitpoint.bundle import CLOUD, LOCAL, Bundle, Manifest, Split, file_sha256, slug, write_manifest

AUTO = "auto"
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
    codec: str = defaults.CODEC,
    golden: int = 2,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    candidates: str | None = None,
    edge_profile: ProfileArg = None,
    cloud_profile: ProfileArg = None,
    rtt_ms: float = defaults.RTT_MS,
    calibration: CalibrationArg = None,
    min_agreement: float = defaults.MIN_AGREEMENT,
    max_rel_error: float | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Bundle:
    """Split ``model`` at each cut in ``at`` and write the verified bundle to ``out``.

    ``candidates="auto"`` adds every split that is the fastest for some bandwidth
    from 0.1 to 1000 Mbit/s at ``rtt_ms``, priced from the edge and cloud
    profiles (measured on this machine when not given); ``at=None`` then asks
    for those only. Whenever splits are priced, each one's ``predicted`` cost is
    in the manifest and the profiles are copied into the bundle. A .tflite
    model is priced from LiteRT profiles, an ONNX model from onnxruntime ones.

    With ``calibration`` (an .npz of input samples, see ``partitioner.calibration``)
    every split also runs through ``codec`` on those samples: a requested split
    under ``min_agreement`` (or over ``max_rel_error``) is refused, candidates
    under it are not taken, and each split's figures go in its ``verification``.

    ``finish(directory)`` runs on the written bundle before it takes its place
    (``partitioner.torch_segments`` adds PyTorch segments so); if it raises, no bundle is written.
    """
    priced = candidates is not None or edge_profile is not None or cloud_profile is not None
    kind = format_of(model)
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
    threshold = Threshold(min_agreement, max_rel_error)
    requests = cut_requests(at) if at is not None else []
    log(f"loading {model}")
    fmt = kind.open(model, shapes, log)
    source = fmt.source
    view = source.view
    named = {i: resolve_cut(view, names) for i, names in enumerate(requests) if names is not None}
    calibrator = load_calibrator(source.path, calibration, codec, threshold, log)
    sweep_cuts = candidate_cuts(view) if None in requests else []
    pricing = Pricing.of(source, edge_profile, cloud_profile, codec, log) if priced else None
    for note in pricing.notes if pricing else []:
        log(f"note: {note}")
    regions: list[Region] = []
    if pricing is not None and candidates is not None:
        checker = None if calibrator is None else SplitChecker(pricing.cost_model, calibrator, log)
        regions = _pareto_regions(pricing, rtt_ms, log, Constraints(refusal=checker.refusal) if checker else None)
    pareto_cuts = [resolve_cut(view, r.choice.at) for r in regions if r.choice.at]

    log(f"running the full model on {golden} golden input(s){fmt.engine_note}")
    cases = fmt.golden_cases(golden)
    log("measuring tensor sizes")
    sent = [t for cut in [*named.values(), *sweep_cuts, *pareto_cuts] for t in cut.sent]
    table = fmt.measure([*view.inputs, *view.outputs, *sent], {**cases[0][0], **cases[0][1]}, log)
    if None in requests:
        chosen = auto_candidate(describe_candidates(sweep_cuts, table, source.compute_nodes))
        edge_share = f"{chosen.prefix_nodes}/{chosen.total_nodes} {fmt.node_word} on the edge"
        log(f"auto: cut at {chosen.at} ({chosen.bytes:,} bytes, {edge_share})")
        auto_cut = resolve_cut(view, chosen.names)
    cuts = _distinct([auto_cut if names is None else named[i] for i, names in enumerate(requests)] + pareto_cuts, log)

    with staged_directory(out, overwrite) as root:
        splits = [_write_split(fmt, table, cut, split_id, root, cases, log) for cut, split_id in _with_ids(cuts)]
        trivial = _trivial_splits(table, view.inputs, source.compute_nodes, fmt.model_file)
        if calibrator is not None:
            splits = [_calibrated(calibrator, s, root, log) for s in splits]
            trivial = _calibrated(calibrator, trivial[0], root, log), _calibrated(calibrator, trivial[1], root, log)
        default = splits[0].id if requests else _default_candidate(regions, splits)
        if pricing is not None:
            splits = [_priced(pricing, s, cut.prefix) for s, cut in zip(splits, cuts)]
            trivial = _priced(pricing, trivial[0], pricing.cost_model.nodes), _priced(pricing, trivial[1], frozenset())
        log(f"writing the bundle to {out}")
        model_files = fmt.save_model(root / fmt.model_file)
        manifest = Manifest(
            name=slug(name or source.path.stem),
            model_sha256=file_sha256(*model_files),
            opset=fmt.opset,
            inputs=tuple(table.spec(t) for t in view.inputs),
            outputs=tuple(table.spec(t) for t in view.outputs),
            splits=(*splits, *trivial),
            default_split=default,
            codec=codec,
            model_file=fmt.model_file,
            golden=write_golden(root, cases),
            profiles=pricing.save_profiles(root) if pricing is not None else (),
        )
        write_manifest(root, manifest)
        if finish is not None:
            finish(root)
    return Bundle(out)


def _pareto_regions(
    pricing: Pricing, rtt_ms: float, log: Callable[[str], None], constraints: Constraints | None
) -> list[Region]:
    """The splits that are fastest for some bandwidth from 0.1 to 1000 Mbit/s, logged with where they win."""
    regions = pareto(pricing.cost_model, rtt_ms, constraints=constraints)
    for r in regions:
        log(f"candidate {r.choice.id}: fastest from {r.low_bps / 1e6:.3g} to {r.high_bps / 1e6:.3g} Mbit/s "
            f"at RTT {rtt_ms:g} ms")
    return regions


def _default_candidate(regions: list[Region], splits: list[Split]) -> str:
    """Without ``--at``: the split fastest at 10 Mbit/s."""
    winner = next(r.choice for r in regions if r.low_bps <= defaults.BANDWIDTH_BPS <= r.high_bps)
    if not winner.at:
        return winner.id  # local or cloud
    return next(s.id for s in splits if set(s.sent_names) == set(winner.sent))


def _priced(pricing: Pricing, split: Split, prefix: frozenset[int]) -> Split:
    """``split`` with its predicted cost (none if the codec cannot send what it sends)."""
    try:
        return replace(split, predicted=pricing.cost_model.cost(prefix).to_json())
    except PartitionError:
        return split


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
    fmt: ModelFormat,
    table: TensorTable,
    cut: Cut,
    split_id: str,
    root: Path,
    cases: list[tuple[Tensors, Tensors]],
    log: Callable[[str], None],
) -> Split:
    log(f"extracting split {split_id}: sends {', '.join(cut.sent)}")
    edge_file, cloud_file = write_segments(fmt, table, cut, split_id, root)
    log(f"verifying split {split_id} on {len(cases)} golden input(s){fmt.engine_note}")
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


def _calibrated(calibrator: Calibrator, split: Split, root: Path, log: Callable[[str], None]) -> Split:
    """``split`` with its calibration figures in ``verification``; PartitionError if it is refused.

    ``local`` is exact by definition. ``cloud`` is in every bundle whatever it
    scores, so a refused ``cloud`` is a warning, not an error.
    """
    if split.id == LOCAL:
        agreement = calibrator.exact()
    else:
        edge = None if split.edge_file is None else load_segment(split.id, "edge", root / split.edge_file)
        cloud = calibrator.full if split.edge_file is None else load_segment(split.id, "cloud", root / split.cloud_file)
        agreement = calibrator.check(edge, cloud)
        if agreement.refused and split.id == CLOUD:
            log(f"warning: split 'cloud' (the raw inputs sent) falls under the calibration: {agreement.refused}; "
                "the bundle holds it anyway, do not pin it")
        elif agreement.refused:
            raise PartitionError(f"split {split.id!r} is refused: {agreement.refused}; "
                                 "cut elsewhere or use a finer codec (int8-channel, fp16)")
        else:
            top1 = "" if agreement.top1 is None else f"top-1 agreement {agreement.top1:.3f}, "
            log(f"split {split.id}: {top1}max_rel {agreement.max_rel:.3g} {calibrator.measured_on}")
    record = {**calibrator.to_json(), **agreement.to_json()}
    return replace(split, verification={**split.verification, "calibration": record})


def _trivial_splits(table: TensorTable, inputs: list[str], total_nodes: int, model_file: str) -> tuple[Split, Split]:
    local = Split(id=LOCAL, cut=(), edge_file=None, cloud_file=None, edge_nodes=total_nodes)
    cloud = Split(
        id=CLOUD, cut=tuple(table.spec(t) for t in inputs), edge_file=None, cloud_file=model_file, cloud_nodes=total_nodes
    )
    return local, cloud

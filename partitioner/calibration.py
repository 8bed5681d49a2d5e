"""Lossy codecs, checked: each split run through the codec on calibration inputs and compared with the full model.

A lossy codec (fp16, int8, int8-channel) changes what the cloud receives, so a
split that verifies bit-exact may still answer differently once its tensors
are quantised. A split is checked as it will run: the prefix on a request, the
codec's encode and decode on every tensor sent (each request on its own, as
the edge encodes them), then the suffix; the outputs are compared with the
full model's on the same request:

- top-1 agreement for classifier-like outputs (2-D float ``[N, C]``, C >= 2):
  the share of samples whose argmax is unchanged, the lowest over such outputs;
- max_abs and max_rel over every output (``splitpoint.compare``: max_rel is
  relative to the reference's largest magnitude).

A split is offered when its top-1 agreement is at least ``min_agreement`` and,
if ``max_rel_error`` is set, its max_rel at most that; ``local`` always is.

Calibration inputs are one ``.npz`` keyed by input name, each array holding
the N samples along its first (batch) axis. A model with a dynamic batch runs
one sample per request; a model whose batch is fixed to B runs B at a time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partitioner.costmodel import Choice, CostModel
from partitioner.errors import PartitionError
from partitioner.formats import ModelFormat, format_for, write_segments
from partitioner.golden import Tensors
from partitioner.measure import TensorTable
from partitioner.verify import edge_then_cloud, load_segment
from splitpoint import codec as codec_mod
from splitpoint import defaults
from splitpoint.backends import Session, load_session
from splitpoint.bundle import LOCAL, TensorSpec
from splitpoint.compare import EXACT, difference
from splitpoint.errors import CodecError, SplitpointError, first_line

CalibrationArg = str | Path | None


@dataclass(frozen=True)
class Threshold:
    """When a split is offered: top-1 agreement at least ``min_agreement``, max_rel at most ``max_rel_error`` (if set)."""

    min_agreement: float = defaults.MIN_AGREEMENT
    max_rel_error: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise PartitionError(f"--min-agreement {self.min_agreement:g}: must be between 0 and 1")
        if self.max_rel_error is not None and not self.max_rel_error > 0:
            raise PartitionError(f"--max-rel-error {self.max_rel_error:g}: must be positive")

    def refusal(self, top1: float | None, max_rel: float, measured_on: str) -> str | None:
        """Why a split with these figures is not offered, or None."""
        if top1 is not None and top1 < self.min_agreement:
            return f"--min-agreement {self.min_agreement:g}: top-1 agreement {top1:.3f} {measured_on}"
        if self.max_rel_error is not None and max_rel > self.max_rel_error:
            return f"--max-rel-error {self.max_rel_error:g}: max_rel {max_rel:.3g} {measured_on}"
        return None


@dataclass(frozen=True)
class Agreement:
    """How a split answered on the calibration inputs; ``refused`` says why it is not offered (None: it is)."""

    samples: int
    top1: float | None  # None without a classifier-like output, or when the codec refused a tensor
    max_abs: float | None
    max_rel: float | None
    refused: str | None

    @property
    def offered(self) -> bool:
        return self.refused is None

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "top1": self.top1, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "offered": self.offered, "refused": self.refused}


@dataclass(frozen=True)
class CalibrationSet:
    path: Path
    samples: int
    requests: list[Tensors]  # the samples cut into batches the model takes

    @classmethod
    def load(cls, path: str | Path, inputs: Sequence[TensorSpec]) -> CalibrationSet:
        """Read ``path`` (an .npz keyed by input name, samples along axis 0) and check it fits ``inputs``."""
        path = Path(path)
        where = f"calibration {path}"
        if not path.is_file():
            raise PartitionError(f"{where}: no such file")
        how = "save one with numpy.savez(FILE, INPUT_NAME=samples, ...)"
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array")
            with loaded as archive:
                arrays = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as e:  # not numpy's format, one array (.npy), or pickled objects
            raise PartitionError(f"{where}: not an .npz archive ({first_line(e)}); {how}") from None
        names = [s.name for s in inputs]
        for key in arrays:
            if key not in names:
                raise PartitionError(f"{where}: {key!r} is not an input of the model (inputs: {', '.join(names)})")
        batch = _request_batch(where, inputs)
        counts: dict[str, int] = {}
        for spec in inputs:
            if spec.name not in arrays:
                raise PartitionError(f"{where}: no array for input {spec.name!r} (inputs: {', '.join(names)})")
            counts[spec.name] = _checked_samples(where, arrays[spec.name], spec)
        if len(set(counts.values())) > 1:
            raise PartitionError(f"{where}: inputs hold different numbers of samples "
                                 f"({', '.join(f'{n}: {c}' for n, c in counts.items())})")
        samples = counts[names[0]]
        if samples == 0:
            raise PartitionError(f"{where}: no samples (the arrays' first axis is empty)")
        if samples % batch:
            raise PartitionError(f"{where}: {samples} samples, but the model takes batches of {batch}: "
                                 f"give a multiple of {batch}")
        requests = [{n: a[k:k + batch] for n, a in arrays.items()} for k in range(0, samples, batch)]
        return cls(path, samples, requests)


def _request_batch(where: str, inputs: Sequence[TensorSpec]) -> int:
    """Samples per request: 1 when the batch axis is dynamic, else the batch the model fixes."""
    fixed: set[int] = set()
    for spec in inputs:
        if not spec.shape:
            raise PartitionError(f"{where}: input {spec.name!r} is a scalar; calibration needs a leading batch axis")
        if _fixed(spec.shape[0]):
            fixed.add(int(spec.shape[0]))  # type: ignore[arg-type]
    if len(fixed) > 1:
        raise PartitionError(f"{where}: the model's inputs fix different batch sizes ({sorted(fixed)}); "
                             "calibration needs one batch axis")
    return fixed.pop() if fixed else 1


def _checked_samples(where: str, array: np.ndarray, spec: TensorSpec) -> int:
    """The number of samples in ``array``, after checking its dtype and shape against the input ``spec``."""
    declared = f"{spec.dtype}[{','.join('N' if i == 0 else str(d) if _fixed(d) else '?' for i, d in enumerate(spec.shape))}]"
    if array.dtype.name != spec.dtype:
        raise PartitionError(f"{where}: {spec.name!r} is {array.dtype.name}, the model's input is {declared}")
    if array.ndim != len(spec.shape) or any(
        _fixed(d) and size != d for d, size in zip(spec.shape[1:], array.shape[1:])
    ):
        raise PartitionError(f"{where}: {spec.name!r} has shape {list(array.shape)}, the model's input is {declared} "
                             "(samples along the first axis)")
    return int(array.shape[0])


def _fixed(d: object) -> bool:
    return isinstance(d, int) and d >= 0


@dataclass
class Calibrator:
    """Checks splits of one model with one codec against the full model's outputs on a calibration set."""

    calibration: CalibrationSet
    codec: codec_mod.Codec
    threshold: Threshold
    full: Session
    references: list[Tensors]
    classifiers: list[str]  # the classifier-like outputs, for top-1 agreement

    @classmethod
    def of(cls, model: Path, calibration: str | Path, codec: str, threshold: Threshold, log: Callable[[str], None]
           ) -> Calibrator:
        """Load ``calibration`` for ``model`` and run the full model on it."""
        try:
            full = load_session(model)
        except SplitpointError as e:
            raise PartitionError(f"{model} does not load: {first_line(e)}") from None
        cal = CalibrationSet.load(calibration, full.inputs)
        log(f"running the full model on {cal.samples} calibration sample(s) from {cal.path}")
        references = []
        for request in cal.requests:
            with _engine_errors(request):
                references.append(full.run(request))
        first = references[0]
        classifiers = [n for n, v in first.items() if v.ndim == 2 and v.dtype.kind == "f" and v.shape[1] >= 2]
        return cls(cal, codec_mod.parse(codec), threshold, full, references, classifiers)

    @property
    def measured_on(self) -> str:
        return f"with {self.codec.spec} on {self.calibration.samples} calibration sample(s)"

    @property
    def note(self) -> str | None:
        """What the plan or the log should say when nothing can refuse a split."""
        if self.classifiers or self.threshold.max_rel_error is not None:
            return None
        return ("no classifier-like output (2-D float [N, C]) to measure top-1 agreement on, and no --max-rel-error: "
                "calibration reports the errors but refuses no split")

    def to_json(self) -> dict[str, Any]:
        return {"file": str(self.calibration.path), "samples": self.calibration.samples, "codec": self.codec.spec,
                "min_agreement": self.threshold.min_agreement, "max_rel_error": self.threshold.max_rel_error,
                "classifier_outputs": list(self.classifiers)}

    def exact(self) -> Agreement:
        """The full model's own agreement: what ``local`` gets."""
        return Agreement(self.calibration.samples, 1.0 if self.classifiers else None, 0.0, 0.0, None)

    def check(self, edge: Session | None, cloud: Session) -> Agreement:
        """Run the split (``edge`` None: the raw inputs are sent) through the codec on every request."""
        worst = EXACT
        agreeing = dict.fromkeys(self.classifiers, 0)
        for k, (request, reference) in enumerate(zip(self.calibration.requests, self.references)):
            try:
                with _engine_errors(request):
                    got = edge_then_cloud(edge, cloud, request, self._round_trip)
            except CodecError as e:
                why = f"codec {self.codec.spec} refuses calibration request {k}: {e}"
                return Agreement(self.calibration.samples, None, None, None, why)
            worst = worst.worst(difference(reference, got))
            for name in self.classifiers:
                agreeing[name] += int(np.sum(reference[name].argmax(axis=1) == got[name].argmax(axis=1)))
        top1 = min((count / self.calibration.samples for count in agreeing.values()), default=None)
        refused = self.threshold.refusal(top1, worst.max_rel, self.measured_on)
        return Agreement(self.calibration.samples, top1, worst.max_abs, worst.max_rel, refused)

    def _round_trip(self, name: str, value: np.ndarray) -> np.ndarray:
        encoded = self.codec.encode(value, name)
        return codec_mod.decode(encoded.data, encoded.params, dtype=value.dtype, shape=value.shape, name=name)


@contextmanager
def _engine_errors(request: Tensors) -> Iterator[None]:
    """An engine's failure on a calibration request as one line (codec errors pass: they refuse a split)."""
    try:
        yield
    except CodecError:
        raise
    except Exception as e:  # onnxruntime raises its own types, LiteRT sessions SplitpointError
        shapes = ", ".join(f"{n} {v.dtype}{list(v.shape)}" for n, v in request.items())
        raise PartitionError(f"the model fails on a calibration request ({shapes}): {first_line(e)}") from None


@dataclass
class SplitChecker:
    """Calibration of any split of a model, by prefix, for the search: segments extracted on demand, cached."""

    cost_model: CostModel
    calibrator: Calibrator
    log: Callable[[str], None]
    checked: dict[frozenset[int], tuple[Choice, Agreement]] = field(default_factory=dict)
    _table: TensorTable | None = None

    def refusal(self, choice: Choice) -> str | None:
        """Why ``choice`` is not offered (``Constraints.refusal``); ``local`` always is."""
        return None if choice.id == LOCAL else self.agreement(choice).refused

    def agreement(self, choice: Choice) -> Agreement:
        if choice.prefix not in self.checked:
            self.checked[choice.prefix] = choice, self._measure(choice)
        return self.checked[choice.prefix][1]

    def _measure(self, choice: Choice) -> Agreement:
        if choice.id == LOCAL:
            return self.calibrator.exact()
        self.log(f"calibrating split {choice.id} {self.calibrator.measured_on}")
        if not choice.prefix:
            return self.calibrator.check(None, self.calibrator.full)
        fmt = format_for(self.cost_model.source)
        cut, _ = self.cost_model.cut(choice.prefix)
        with tempfile.TemporaryDirectory(prefix="splitpoint-calibration-") as tmp:
            root = Path(tmp)
            edge_file, cloud_file = write_segments(fmt, self._tensors(fmt), cut, choice.id, root)
            edge, cloud = (load_segment(choice.id, side, root / rel) for side, rel in (("edge", edge_file),
                                                                                      ("cloud", cloud_file)))
            return self.calibrator.check(edge, cloud)

    def _tensors(self, fmt: ModelFormat) -> TensorTable:
        """Types and shapes of every tensor a cut may send, measured once."""
        if self._table is None:
            view = fmt.source.view
            self._table = fmt.measure([*view.inputs, *view.outputs, *view.producer], fmt.source.sample(0), self.log)
        return self._table


def load_calibrator(
    model: Path, calibration: CalibrationArg, codec: str, threshold: Threshold, log: Callable[[str], None]
) -> Calibrator | None:
    """The calibrator for ``calibration`` (None without one), logging when it cannot refuse anything."""
    if calibration is None:
        return None
    calibrator = Calibrator.of(model, calibration, codec, threshold, log)
    if calibrator.note:
        log(f"note: {calibrator.note}")
    return calibrator


"""The worker's protocol-free core: find the segment, check the version, run it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cloud.repository import Segment
from splitpoint.errors import SplitpointError


class ModelNotFound(SplitpointError):
    pass


class VersionMismatch(SplitpointError):
    pass


@dataclass
class Result:
    outputs: dict[str, np.ndarray]
    compute_s: float


class InferenceCore:
    def __init__(self, segments: Mapping[str, Segment]):
        self.segments = dict(segments)

    def segment(self, name: str) -> Segment:
        try:
            return self.segments[name]
        except KeyError:
            served = ", ".join(sorted(self.segments)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {served}") from None

    def check_version(self, segment: Segment, model_sha256: str | None) -> None:
        """Refuse requests cut from another version of the model (None: the sender did not say)."""
        if model_sha256 is not None and model_sha256 != segment.model_sha256:
            raise VersionMismatch(
                f"model {segment.name!r}: request was cut from model sha256 {str(model_sha256)[:12]}..., "
                f"this worker serves {segment.model_sha256[:12]}..."
            )

    def infer(self, segment: Segment, inputs: Mapping[str, np.ndarray]) -> Result:
        start = time.perf_counter()
        outputs = segment.session.run(inputs)
        return Result(outputs, time.perf_counter() - start)

"""Wall-clock timing of model calls for the profilers: sessions opened as each profiler's backend runs them.

Profiling interleaves several timed things in one loop (the full model, a
one-node model, segments) so a busy spell on a shared machine hits all alike;
each is a ``Timed`` around a runner, a function from input tensors to output
tensors.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import onnxruntime as ort

from partitioner import ort_trace
from partitioner.errors import PartitionError
from partitioner.golden import Tensors
from splitpoint.errors import first_line

Runner = Callable[[Tensors], Tensors]
Opener = Callable[[Path], Runner]  # a model file to its runner, with the profile's backend and threads


class Timed:
    """A runner whose calls are timed; ``run`` keeps the time only when asked (warm-up calls are not)."""

    def __init__(self, runner: Runner):
        self._runner = runner
        self.ms: list[float] = []

    def run(self, feeds: Tensors, keep: bool) -> Tensors:
        start = time.perf_counter()
        outputs = self._runner(feeds)
        if keep:
            self.ms.append((time.perf_counter() - start) * 1e3)
        return outputs


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection while timing (as ``timeit`` does): a collection's pause is not the model's time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def ort_opener(threads: int) -> Opener:
    """onnxruntime sessions with the profiler's options (``ort_trace.session_options``)."""

    def open_session(path: Path) -> Runner:
        try:
            session = ort.InferenceSession(str(path), ort_trace.session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types
            raise PartitionError(f"{path.name}: onnxruntime cannot load it: {first_line(e)}") from None
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]

        def run(feeds: Tensors) -> Tensors:
            return dict(zip(outputs, session.run(outputs, {name: feeds[name] for name in inputs})))

        return run

    return open_session


def litert_opener(threads: int) -> Opener:
    """LiteRT interpreters with ``threads`` threads and the default delegate (XNNPACK), as the edge runs them."""
    from splitpoint.backends import LiteRTSession

    def open_session(path: Path) -> Runner:
        return LiteRTSession(path, threads=threads).run

    return open_session

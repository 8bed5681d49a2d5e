"""Pipelined streams over OIP ``ModelStreamInfer``.

Three things overlap: a producer thread runs the prefix of the next frames
and sends their cut tensors, gRPC carries them to the worker and back, and
the caller's thread hands out answers in input order. Every frame is
answered exactly once: by the worker within its budget, or locally from its
cut tensors when the budget runs out, the stream breaks or the circuit is open.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import grpc
import numpy as np

from splitpoint import wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint.errors import CodecError, WireError
from splitpoint.framing import Framed

if TYPE_CHECKING:
    from edge.runtime import EdgeRuntime, Frame

_END = object()


class _Pending:
    """A frame between its prefix and its answer."""

    def __init__(self, request_id: str, frame: Frame, deadline: float):
        self.request_id = request_id
        self.frame = frame
        self.deadline = deadline
        self.answered = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None  # None once answered: finish locally
        self.sent_at = 0.0
        self.alone = False  # no other frame was in flight when it was sent


class _Call:
    """One ModelStreamInfer call: requests in through a queue, answers matched by id."""

    def __init__(self, rt: EdgeRuntime, pending: dict[str, _Pending], lock: threading.Lock):
        self._rt = rt
        self._pending = pending
        self._lock = lock
        self._requests: queue.Queue = queue.Queue()
        self.broken = False
        self._call = rt._client.stream(iter(self._requests.get, _END))  # type: ignore[union-attr]
        self._reader = threading.Thread(target=self._read, name="splitpoint-stream-reader", daemon=True)
        self._reader.start()

    def send(self, request: bytes) -> None:
        self._requests.put(request)

    def close(self) -> None:
        self._requests.put(_END)

    def cancel(self) -> None:
        self._call.cancel()

    def _read(self) -> None:
        reason = "stream ended"
        try:
            for answer in self._call:
                self._answer(answer)
        except grpc.RpcError as e:
            reason = "worker unavailable" if e.code() == grpc.StatusCode.UNAVAILABLE else f"stream broke: {e.code().name}"
        self._break(reason)

    def _answer(self, answer: tuple[str, Framed[pb.ModelInferResponse]]) -> None:
        error_message, response = answer
        with self._lock:
            p = self._pending.pop(response.header.id, None)
        if p is None:  # answered late: the frame was already finished locally
            return
        self._rt.busy.add(-1)
        trace = p.frame.trace
        if error_message:
            # A stream answer carries a message but no status code: overload and a version
            # mismatch look alike, so this counts as an ordinary failure, not a fatal one.
            trace.fallback_reason = f"worker refused the frame: {error_message}"
            self._rt.breaker.record_failure(trace.fallback_reason)  # type: ignore[union-attr]
        else:
            try:
                p.outputs = wire.read_response(response)
            except (CodecError, WireError) as e:
                trace.fallback_reason = f"bad response: {e}"
            else:
                trace.path = "cloud"
                trace.cloud_ms = self._rt._compute_ms(response)
                trace.network_ms = max((time.perf_counter() - p.sent_at) * 1e3 - trace.cloud_ms, 0.0)
                if p.alone:  # otherwise its time includes waiting behind earlier frames
                    self._rt.link.observe_transfer(trace.bytes_encoded + response.size, trace.network_ms)
                self._rt.breaker.record_success()  # type: ignore[union-attr]
        p.answered.set()

    def _break(self, reason: str) -> None:
        """The call is over: every frame still waiting on it finishes locally."""
        with self._lock:
            self.broken = True
            orphans = list(self._pending.values())
            self._pending.clear()
        self._rt.busy.add(-len(orphans))
        if orphans and reason != "stream ended":
            self._rt.breaker.record_failure(reason)  # type: ignore[union-attr]
        for p in orphans:
            p.frame.trace.fallback_reason = p.frame.trace.fallback_reason or reason
            p.answered.set()


def pipelined(
    rt: EdgeRuntime, inputs: Iterable[Mapping[str, np.ndarray]], max_in_flight: int, budget_ms: float
) -> Iterator[dict[str, np.ndarray]]:
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    slots = threading.Semaphore(max_in_flight)
    order: queue.Queue = queue.Queue()
    pending: dict[str, _Pending] = {}
    lock = threading.Lock()
    stop = threading.Event()
    calls: list[_Call] = []

    def produce() -> None:
        try:
            for seq, x in enumerate(inputs):
                slots.acquire()
                if stop.is_set():
                    return
                frame = rt._edge_half(x, rt._choose())
                p = _Pending(str(seq), frame, frame.start + budget_ms / 1e3)
                order.put(p)
                if frame.segments.suffix is None:  # a local split: the edge half was the whole model
                    p.outputs = {}
                    p.answered.set()
                else:
                    _dispatch(rt, p, pending, lock, calls)
        except BaseException as e:  # bad input: the caller gets the error in order
            order.put(e)
        finally:
            order.put(_END)
            for c in calls:
                c.close()

    producer = threading.Thread(target=produce, name="splitpoint-stream-prefix", daemon=True)
    producer.start()
    try:
        while (item := order.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            p: _Pending = item
            if not p.answered.wait(max(p.deadline - time.perf_counter(), 0.0)):
                with lock:
                    if pending.pop(p.request_id, None) is not None:  # its answer, if it still comes, is dropped
                        rt.busy.add(-1)
                p.frame.trace.fallback_reason = "deadline exceeded"
                rt.breaker.record_failure("deadline exceeded")  # type: ignore[union-attr]
            outputs = p.outputs if p.outputs is not None else rt._suffix_locally(p.frame)
            slots.release()
            yield rt._complete(p.frame, outputs)
    finally:
        stop.set()
        slots.release()
        for c in calls:
            c.cancel()
        producer.join(timeout=5)


def _dispatch(rt: EdgeRuntime, p: _Pending, pending: dict[str, _Pending], lock: threading.Lock, calls: list[_Call]) -> None:
    """Send the frame on the live call (opening one if the circuit allows), or mark it local."""
    breaker = rt.breaker
    assert breaker is not None
    live = calls[-1] if calls and not calls[-1].broken else None
    if live is None and not breaker.allow():
        p.frame.trace.fallback_reason = "circuit open"
        p.answered.set()
        return
    try:
        framed, p.frame.trace.bytes_encoded = rt._encode(p.frame, p.request_id)
        request = framed.to_bytes()  # here, on the producer's thread, not on gRPC's sending thread
    except (CodecError, WireError) as e:
        p.frame.trace.fallback_reason = f"encode failed: {e}"
        p.answered.set()
        return
    with lock:
        p.alone = not pending
        pending[p.request_id] = p
    rt.busy.add(1)
    if live is None:
        live = _Call(rt, pending, lock)
        calls.append(live)
    p.sent_at = time.perf_counter()
    live.send(request)

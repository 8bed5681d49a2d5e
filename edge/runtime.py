"""EdgeRuntime: run the prefix here, the suffix on the worker, and always answer.

The prefix runs locally, the cut tensors are encoded and sent with the
request's remaining budget as the gRPC deadline, and on any failure the
suffix runs locally from the tensors already computed, so the prefix is never
computed twice and the answer is the full model's.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from edge.breaker import CircuitBreaker
from edge.client import ClientTLS, WorkerClient
from edge.link import LinkEstimator
from edge.policy import Explore, LowestPredicted, Pinned, SplitPolicy
from edge.speed import Speed, SpeedEstimator
from edge.trace import Counters, Trace
from splitpoint import codec as codec_mod
from splitpoint import defaults, wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint.backends import Session, SharedWeights, load_session, release_free_memory
from splitpoint.bundle import LOCAL, Bundle, Manifest, Split, health_service, segment_model_name
from splitpoint.cost import SplitCost
from splitpoint.errors import BundleError, CodecError, SplitpointError, WireError
from splitpoint.framing import Framed

log = logging.getLogger("splitpoint.edge")

# Failures a retry cannot heal: the circuit opens at once.
_FATAL = {
    grpc.StatusCode.FAILED_PRECONDITION: "version mismatch",
    grpc.StatusCode.NOT_FOUND: "model not served by the worker",
    grpc.StatusCode.INVALID_ARGUMENT: "worker refused the request",
    grpc.StatusCode.UNIMPLEMENTED: "worker does not speak OIP",
    grpc.StatusCode.UNAUTHENTICATED: "worker refused our credentials",
    grpc.StatusCode.PERMISSION_DENIED: "worker refused our credentials",
}
_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "worker unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline exceeded",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "worker overloaded",
    grpc.StatusCode.CANCELLED: "call cancelled",
    **_FATAL,
}


def _unavailable(e: BaseException) -> bool:
    return isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAVAILABLE


class EdgeRuntime:
    """Split inference for one bundle.

    ``split`` is a split id from the bundle, "local" or "cloud" (default: the
    bundle's default split). ``cloud`` is the worker's ``HOST:PORT``, or
    several (a list, or one string separated by commas) that gRPC's
    round_robin balances over, skipping those down or not serving this model
    version. ``deadline_ms`` is the latency budget of a call to
    the worker path: past it the suffix finishes locally. ``codec`` overrides
    the bundle's codec for the cut tensors. ``tls`` and ``token`` reach a
    worker that requires TLS (or mutual TLS) and a bearer token.
    ``share_weights`` holds each weight once across the full model, prefixes
    and suffixes (see ``splitpoint.backends.SharedWeights``); it applies when
    more than one onnxruntime session is loaded. ``backend="torch"`` runs the
    prefix, the local suffix and the full model from the bundle's PyTorch
    segments (a bundle made from a torch module); the worker's suffix stays ONNX.
    """

    def __init__(
        self,
        bundle: str | Path,
        cloud: str | Sequence[str] | None = None,
        split: str | None = None,
        deadline_ms: float = 1000.0,
        codec: str | None = None,
        threads: int | None = None,
        failure_threshold: int = 3,
        max_attempts: int = 3,
        max_message_bytes: int = defaults.MAX_MESSAGE_BYTES,
        tls: ClientTLS | None = None,
        token: str | None = None,
        share_weights: bool = True,
        backend: str | None = None,
    ):
        self.bundle = Bundle(bundle)
        self.bundle.check_model(backend)  # the local fallback must be the version the segments were cut from
        m = self.bundle.manifest
        self.deadline_ms = float(deadline_ms)
        self.codec = codec_mod.parse(codec or m.codec)
        self.max_attempts = max_attempts
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self.link = LinkEstimator()
        self.busy = InFlight()
        self.last_trace: Trace | None = None
        self.speed = SpeedEstimator()
        self._costs = _offered_costs(m) if split == AUTO else {}
        self.policy: SplitPolicy = (
            _auto_policy(self._costs, m.default_split, self.speed.estimate) if split == AUTO
            else Pinned(m.split(split or m.default_split).id)
        )
        ids = self.policy.candidates
        remote = [i for i in ids if i != LOCAL]
        if remote and not cloud:
            raise SplitpointError(
                f"split {split or m.default_split!r} needs a worker: pass cloud='HOST:PORT', or split='local' to run all here"
            )

        self._threads = threads
        self._backend = backend
        self._full_path = self.bundle.path(m.full_model_file(backend))
        files = {self._full_path} | {self.bundle.path(f) for i in ids for f in m.split(i).segment_files(backend) if f}
        onnx_files = [f for f in files if f.suffix == ".onnx"]
        self.shared_weights = SharedWeights() if share_weights and len(onnx_files) > 1 else None
        self._full = load_session(self._full_path, threads=threads, shared=self.shared_weights)
        self._segments = {i: self._load_segments(m.split(i)) for i in ids}
        release_free_memory()  # the parsed model files

        self._client: WorkerClient | None = None
        self.breaker: CircuitBreaker | None = None
        self._closed = threading.Event()
        self._probing = threading.Lock()  # one background link probe at a time
        if remote:
            service = health_service(self._segments[remote[0]].model_name, m.model_sha256)
            self._client = WorkerClient(cloud, max_message_bytes, tls=tls, token=token, health_service=service)  # type: ignore[arg-type]
            self.breaker = CircuitBreaker(lambda: self._client.serving(service), failure_threshold)
            if split == AUTO:
                threading.Thread(target=self._probe_rtt, args=(service,), name="splitpoint-rtt-probe", daemon=True).start()

    @property
    def split(self) -> Split:
        """The split the next request would take if the link stays as estimated."""
        return self._segments[self.policy.current].split

    # -- public -------------------------------------------------------------

    def infer(self, inputs: Mapping[str, np.ndarray], deadline_ms: float | None = None) -> dict[str, np.ndarray]:
        """Run the model on ``inputs``; always returns the full model's outputs."""
        frame = self._edge_half(inputs, self._choose())
        if frame.segments.suffix is None:  # split "local": the edge half was the whole model
            self._explore(inputs)
            return self._complete(frame, {})
        budget_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        remote = None
        assert self.breaker is not None
        if self.breaker.allow():
            remote = self._call_worker(frame, frame.start + budget_ms / 1e3)
        else:
            frame.trace.fallback_reason = "circuit open"
        return self._complete(frame, remote if remote is not None else self._suffix_locally(frame))

    def stream(
        self, inputs: Iterable[Mapping[str, np.ndarray]], max_in_flight: int = 4, deadline_ms: float | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Outputs for a stream of inputs, in order, pipelined over ``ModelStreamInfer``.

        The prefix of frame n+1 runs while frame n is on the wire or in the
        cloud; at most ``max_in_flight`` frames are between prefix and answer.
        A frame the worker does not answer within its budget, or lost when
        the stream breaks, is finished locally from its cut tensors.
        """
        from edge.stream import pipelined

        budget_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        return pipelined(self, inputs, max_in_flight, budget_ms)

    def close(self) -> None:
        self._closed.set()
        if self.breaker is not None:
            self.breaker.shutdown()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = self.bundle.manifest.inputs
        missing = [s.name for s in specs if s.name not in inputs]
        extra = [k for k in inputs if k not in {s.name for s in specs}]
        if missing or extra:
            raise WireError(
                f"model {self.bundle.name!r} takes inputs {[s.name for s in specs]}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {extra}" if extra else "")
            )
        feeds = {}
        for s in specs:
            a = np.asarray(inputs[s.name])
            wire.check_tensor(s.name, a, s)
            feeds[s.name] = a
        return feeds

    def _choose(self) -> Segments:
        return self._segments[self.policy.choose(self.link.estimate())]

    def _explore(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Probe the link in the background when the policy asks for it; the caller is answered locally meanwhile."""
        if self.breaker is None or not self._probing.acquire(blocking=False):
            return  # no worker, or a probe under way (a probe that comes due meanwhile waits for it)
        split_id = self.policy.take_probe()
        if split_id is None:
            self._probing.release()
            return
        threading.Thread(target=self._probe_link, args=(inputs, split_id), name="splitpoint-link-probe", daemon=True).start()

    def _probe_link(self, inputs: Mapping[str, np.ndarray], split_id: str) -> None:
        """One request through ``split_id`` whose answer is dropped: it only teaches the link estimate."""
        try:
            if self.breaker.allow():  # type: ignore[union-attr]
                frame = self._edge_half(inputs, self._segments[split_id])
                # Raw: the probe measures the link, and compressing it would take the edge's CPU from the caller.
                self._call_worker(frame, frame.start + self.deadline_ms / 1e3, codec=_RAW)
                self._observe_speed(frame.trace)
                self.counters.probes += 1
        finally:
            self._probing.release()

    def _observe_speed(self, trace: Trace) -> None:
        """Compare the compute times a request measured with its split's predicted ones."""
        cost = self._costs.get(trace.split)
        if cost is None:
            return
        self.speed.observe("edge", cost.edge_ms, trace.edge_ms)
        if trace.path == "cloud":
            self.speed.observe("cloud", cost.cloud_ms, trace.cloud_ms)

    def _probe_rtt(self, service: str, interval_s: float = 1.0) -> None:
        """Time health checks: the round trip without payload. A few quick ones at start
        (the first also pays for connecting), then one every ``interval_s``."""
        for wait_s in itertools.chain([0.0, 0.02, 0.05], itertools.repeat(interval_s / 4, 3), itertools.repeat(interval_s)):
            if self._closed.wait(wait_s):
                return
            if not self.busy.idle:  # it would queue behind requests' bytes: not the link's delay
                continue
            start = time.perf_counter()
            if self._client is not None and self._client.serving(service, timeout=1.0):
                self.link.observe_rtt((time.perf_counter() - start) * 1e3)

    def _load_segments(self, split: Split) -> Segments:
        """The sessions one split needs on the edge: its prefix, and its suffix for local completion."""

        def open_(rel: str | None) -> Session | None:
            if rel is None:
                return None
            path = self.bundle.path(rel)
            if path == self._full_path:
                return self._full
            return load_session(path, threads=self._threads, shared=self.shared_weights)

        model_name = segment_model_name(self.bundle.name, split.id)
        prefix, suffix = (open_(f) for f in split.segment_files(self._backend))
        made = {s.name for s in self.bundle.manifest.inputs} | {s.name for s in (prefix.outputs if prefix else ())}
        unmade = [n for n in split.sent_names if n not in made]
        unsent = [s.name for s in (suffix.inputs if suffix else ()) if s.name not in split.sent_names]
        if unmade or unsent:
            raise BundleError(
                f"bundle {self.bundle.root}: split {split.id!r} does not match its segments: "
                + (f"it sends {unmade}, which {split.edge_file or 'the model inputs'} does not make" if unmade else
                   f"{split.cloud_file} takes {unsent}, which the split does not send")
            )
        return Segments(split, model_name, prefix, suffix)

    def _edge_half(self, inputs: Mapping[str, np.ndarray], segments: Segments) -> Frame:
        """Check the inputs and run what runs on the edge before the cut."""
        start = time.perf_counter()
        feeds = self._check_inputs(inputs)
        available = dict(feeds)
        session = self._full if segments.suffix is None else segments.prefix
        if session is not None:
            available.update(session.run(feeds))
        frame = Frame(Trace(split=segments.split.id), segments, start, available)
        if segments.suffix is not None:
            frame.sent = {n: available[n] for n in segments.split.sent_names}
            frame.trace.bytes_raw = sum(a.nbytes for a in frame.sent.values())
        frame.trace.edge_ms = (time.perf_counter() - start) * 1e3
        return frame

    def _suffix_locally(self, frame: Frame) -> dict[str, np.ndarray]:
        """Finish the inference here from the cut tensors already computed."""
        frame.trace.path = "fallback"
        t = time.perf_counter()
        outputs = frame.segments.suffix.run(frame.sent)  # type: ignore[union-attr]
        frame.trace.local_suffix_ms = (time.perf_counter() - t) * 1e3
        return outputs

    def _complete(self, frame: Frame, suffix_outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs in manifest order; records the frame's trace."""
        merged = {**frame.available, **suffix_outputs}
        frame.trace.total_ms = (time.perf_counter() - frame.start) * 1e3
        self._observe_speed(frame.trace)
        self.last_trace = frame.trace
        self.counters.record(frame.trace)
        return {o.name: merged[o.name] for o in self.bundle.manifest.outputs}

    def _encode(
        self, frame: Frame, request_id: str = "", codec: codec_mod.Codec | None = None
    ) -> tuple[Framed[pb.ModelInferRequest], int]:
        return wire.build_request(
            frame.segments.model_name,
            frame.sent,
            codec or self.codec,
            {wire.MODEL_SHA256: self.bundle.manifest.model_sha256},
            request_id,
        )

    @staticmethod
    def _compute_ms(response: Framed[pb.ModelInferResponse]) -> float:
        compute_us = wire.get_params(response.header.parameters).get(wire.COMPUTE_US, 0)
        return float(compute_us) / 1e3 if isinstance(compute_us, int) else 0.0

    def _call_worker(
        self, frame: Frame, deadline: float, codec: codec_mod.Codec | None = None
    ) -> dict[str, np.ndarray] | None:
        """The suffix's outputs from the worker, or None (reason in the trace)."""
        assert self._client is not None and self.breaker is not None
        trace = frame.trace
        try:
            request, trace.bytes_encoded = self._encode(frame, codec=codec)
        except (CodecError, WireError) as e:
            trace.fallback_reason = f"encode failed: {e}"
            return None

        def attempt() -> tuple[object, float]:
            trace.attempts += 1
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise _BudgetSpent()
            t = time.perf_counter()
            response = self._client.infer(request, timeout=remaining)  # type: ignore[union-attr]
            return response, time.perf_counter() - t

        retrying = Retrying(
            retry=retry_if_exception(_unavailable),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=0.005, max=0.05),
            reraise=True,
        )
        try:
            with self.busy:
                response, rtt = retrying(attempt)
            outputs = wire.read_response(response)  # type: ignore[arg-type]
        except _BudgetSpent:
            reason, fatal = "deadline exceeded", False
        except grpc.RpcError as e:
            reason, fatal = _REASONS.get(e.code(), f"worker error {e.code().name}"), e.code() in _FATAL
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.link.observe_timeout(trace.bytes_encoded, (time.perf_counter() - frame.start) * 1e3 - trace.edge_ms)
            if fatal:
                log.warning("worker at %s: %s: %s", self._client.address, reason, e.details())
        except (CodecError, WireError) as e:
            reason, fatal = f"bad response: {e}", True
        else:
            trace.path = "cloud"
            trace.cloud_ms = self._compute_ms(response)  # type: ignore[arg-type]
            trace.network_ms = max(rtt * 1e3 - trace.cloud_ms, 0.0)
            self.link.observe_transfer(trace.bytes_encoded + response.size, trace.network_ms)  # type: ignore[attr-defined]
            self.breaker.record_success()
            return outputs
        trace.fallback_reason = reason
        self.breaker.record_failure(reason, fatal=fatal)
        return None


class InFlight:
    """How many calls to the worker are under way (a context manager counts one)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    @property
    def idle(self) -> bool:
        return self._count == 0

    def __enter__(self) -> None:
        self.add(1)

    def __exit__(self, *exc) -> None:
        self.add(-1)


@dataclass
class Segments:
    """What the edge holds for one split."""

    split: Split
    model_name: str  # the worker's OIP model for the suffix
    prefix: Session | None  # None when nothing runs before the cut
    suffix: Session | None  # None for "local"; runs here when the worker cannot


@dataclass
class Frame:
    """One input on its way through the split: what the edge computed so far."""

    trace: Trace
    segments: Segments
    start: float
    available: dict[str, np.ndarray]  # inputs and prefix outputs
    sent: dict[str, np.ndarray] = field(default_factory=dict)  # the cut tensors


AUTO = "auto"
_RAW = codec_mod.parse("raw")


def _offered_costs(m: Manifest) -> dict[str, SplitCost]:
    """The predicted costs of the splits split="auto" may take."""
    # A split the calibration check refused (lossy codec too lossy there) is never chosen.
    costs = {
        s.id: SplitCost.from_json(s.predicted)
        for s in m.splits
        if s.predicted and s.verification.get("calibration", {}).get("offered", True)
    }
    if not costs:
        raise SplitpointError(
            f"split='auto' needs predicted costs in bundle {m.name!r}: "
            "make it with `splitpoint split MODEL -o BUNDLE --candidates auto`"
        )
    return costs


def _auto_policy(costs: dict[str, SplitCost], default: str, speed: Callable[[], Speed]) -> SplitPolicy:
    """split="auto": the lowest predicted latency for the measured link and compute speeds, exploring while local."""
    policy = LowestPredicted(costs, default if default in costs else next(iter(costs)), speed=speed)
    remote = [i for i, c in costs.items() if not c.local]
    # The split to probe the link with: the least edge work (the probe competes with the caller's
    # requests for the edge's CPU), then the most bytes (a payload that tells the bandwidth).
    return Explore(policy, min(remote, key=lambda i: (costs[i].edge_ms + costs[i].encode_ms, -costs[i].sent_bytes))) \
        if remote else policy


class _BudgetSpent(Exception):
    """The request's budget ran out before the worker could be asked (again)."""

"""Faults tests/test_chaos.py does not cause: a worker of another model version, a reset and crawling link,
an overloaded worker, SIGKILL mid-stream, a hung worker among several and one killed, and edges with the
wrong credentials for a TLS worker with a token.

Real worker processes, real gRPC on loopback, testbed.linkproxy for the link. For
each fault: every request is answered, the answer equals the local full model's
(the codec is lossless), no call takes longer than its budget plus the prefix and
local suffix times (plus scheduling slack on this shared machine), and the
counters and traces say which path each request took and why.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import test_worker_security as security
from conftest import circuit_closing, wait_for

from edge import EdgeRuntime
from edge.client import ClientTLS, WorkerClient
from splitpoint.bundle import Bundle
from splitpoint.compare import difference
from testbed.linkproxy import LinkProxy

BUDGET_MS = 200.0
SLACK_MS = 250.0  # a shared 2-core machine under other engineers' load: scheduling, GC, gRPC threads
FRAMES = 16


@pytest.fixture(scope="module")
def frames(demo_bundle) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Inputs and the local full model's outputs for them."""
    rng = np.random.default_rng(21)
    xs = [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(FRAMES)]
    with EdgeRuntime(demo_bundle, split="local") as local:
        return xs, [local.infer(x) for x in xs]


@pytest.fixture(scope="module")
def stale_bundle(demo_bundle, tmp_path_factory) -> Path:
    """The same model architecture and names, other weights: another version (another sha256)."""
    from partitioner import split
    from testbed.models import save_demo_cnn

    manifest = Bundle(demo_bundle).manifest
    d = tmp_path_factory.mktemp("stale")
    at = [[t.name for t in s.cut] for s in manifest.splits if s.edge_file and s.cloud_file]
    return split(save_demo_cnn(d / "democnn.onnx", seed=42), d / "bundle", at=at, name=manifest.name).root


@dataclass
class Ledger:
    """What happened to every request: its path, its fallback reason, and whether it was right and in time."""

    want: list[dict[str, np.ndarray]]
    paths: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    wrong: list[int] = field(default_factory=list)
    late: list[tuple] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, i: int, y: dict[str, np.ndarray], took_ms: float, rt: EdgeRuntime) -> None:
        t = rt.last_trace
        with self.lock:
            self.paths.append(t.path)
            if t.fallback_reason:
                self.reasons[t.fallback_reason.split(":")[0]] += 1
            if not difference(self.want[i % FRAMES], y).ok:
                self.wrong.append(i)
            if took_ms > BUDGET_MS + t.edge_ms + t.local_suffix_ms + SLACK_MS:
                self.late.append((i, round(took_ms), t.path, t.fallback_reason))

    def infer(self, rt: EdgeRuntime, xs: list[dict[str, np.ndarray]], i: int) -> None:
        start = time.perf_counter()
        y = rt.infer(xs[i % FRAMES])
        self.record(i, y, (time.perf_counter() - start) * 1e3, rt)

    def check(self, n: int) -> None:
        print(f"\n{len(self.paths)} requests, paths {dict(Counter(self.paths))}, fallback reasons {dict(self.reasons)}")
        assert len(self.paths) == n, "every request answered"
        assert self.wrong == [], f"answers differ from the local full model at {self.wrong[:10]}"
        assert self.late == [], f"over budget + prefix + local suffix + {SLACK_MS} ms: {self.late[:10]}"


def _until_cloud(rt: EdgeRuntime, ledger: Ledger, xs, start: int, limit_s: float = 20.0) -> int:
    """Send requests (every 50 ms, as a camera would) until one goes to the worker; the index after the last."""
    i, deadline = start, time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ledger.infer(rt, xs, i)
        i += 1
        if ledger.paths[-1] == "cloud":
            return i
        time.sleep(0.05)
    raise AssertionError(f"no request reached the worker in {limit_s} s; reasons {ledger.reasons}")


def test_worker_restarted_with_another_model_version_is_never_mixed_in(demo_bundle, stale_bundle, worker_factory, frames):
    """The edge notices by the sha256 (FAILED_PRECONDITION, then the health service of its version) and finishes locally."""
    xs, want = frames
    w = worker_factory(demo_bundle)
    ledger = Ledger(want)
    with EdgeRuntime(demo_bundle, cloud=w.address, deadline_ms=BUDGET_MS) as rt:
        for i in range(40):
            ledger.infer(rt, xs, i)
        w.kill()
        stale = worker_factory(stale_bundle, port=w.port)  # same address, same model names, other weights
        for i in range(40, 140):
            ledger.infer(rt, xs, i)
            if i == 60:
                time.sleep(1.5)  # the health probe polls the stale worker meanwhile: it must not close the circuit
        assert rt.breaker.state.value == "open"
        stale.kill()
        worker_factory(demo_bundle, port=w.port)
        n = _until_cloud(rt, ledger, xs, 140)
        for i in range(n, n + 40):
            ledger.infer(rt, xs, i)
        counters = rt.counters
    ledger.check(n + 40)
    assert ledger.paths[:40] == ["cloud"] * 40
    assert "cloud" not in ledger.paths[41:140], "an answer from the stale worker would differ; none was taken"
    assert ledger.reasons["version mismatch"] >= 1 and ledger.reasons["circuit open"] >= 90, ledger.reasons
    assert ledger.paths[-40:].count("cloud") >= 36, "splitting resumed (a load spike may still miss a deadline)"
    assert counters.requests == n + 40 == counters.cloud + counters.fallbacks
    assert counters.fallback_reasons["version mismatch"] == ledger.reasons["version mismatch"]


def test_link_reset_again_and_again_and_then_throttled_to_a_crawl(demo_bundle, worker_factory, frames):
    xs, want = frames
    w = worker_factory(demo_bundle)
    ledger = Ledger(want)
    with LinkProxy(w.address) as link, EdgeRuntime(demo_bundle, cloud=link.address, split="pool.out",
                                                   deadline_ms=BUDGET_MS) as rt:
        for i in range(150):  # a reset every 10th request: connections die mid-call, gRPC reconnects
            if i % 10 == 5:
                link.reset()
            ledger.infer(rt, xs, i)
        resets_ok = ledger.paths.count("cloud")
        link.set(bandwidth_bps=1e6)  # ~50 KB per request: 400 ms on the wire, twice the budget
        for i in range(150, 230):
            ledger.infer(rt, xs, i)
        crawl = ledger.paths[150:230]
        link.set(bandwidth_bps=None)
        link.reset()  # what was queued at the crawl goes with the connection
        n = _until_cloud(rt, ledger, xs, 230)
        for i in range(n, n + 30):
            ledger.infer(rt, xs, i)
        attempts = rt.last_trace.attempts
    ledger.check(n + 30)
    assert resets_ok >= 100, f"most requests survive resets (retried within the budget): {resets_ok}/150"
    assert crawl.count("fallback") == 80, crawl
    assert ledger.reasons["deadline exceeded"] >= 1 and ledger.reasons["circuit open"] >= 50, ledger.reasons
    assert ledger.paths[-30:].count("cloud") >= 27 and attempts == 1


def test_overloaded_worker_refusals_finish_locally(demo_bundle, worker_factory, frames):
    """One compute slot and no queue: concurrent edges get RESOURCE_EXHAUSTED and complete the suffix themselves."""
    xs, want = frames
    w = worker_factory(demo_bundle, args=["--max-inflight", "1", "--max-queue", "0"])
    ledger, errors = Ledger(want), []
    per_client, clients = 60, 8

    def client(k: int) -> None:
        try:
            with EdgeRuntime(demo_bundle, cloud=w.address, deadline_ms=BUDGET_MS, failure_threshold=1000) as rt:
                for i in range(per_client):
                    ledger.infer(rt, xs, k * per_client + i)
        except Exception as e:  # reported below: an unanswered request
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    ledger.late = []  # 8 edges share this machine's 2 cores with the worker: latency is not the point here
    ledger.check(clients * per_client)
    assert ledger.reasons["worker overloaded"] >= 10, ledger.reasons
    assert ledger.paths.count("cloud") >= 10, "the worker still serves what it can"
    assert set(ledger.reasons) <= {"worker overloaded", "deadline exceeded"}, ledger.reasons
    assert w.proc.poll() is None


def test_sigkill_mid_stream_then_restart_and_reset(demo_bundle, worker_factory, frames):
    """rt.stream through the link: the worker dies with frames in flight, comes back, then the link resets."""
    xs, want = frames
    w = worker_factory(demo_bundle)
    ledger = Ledger(want)

    def source(n: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(n):
            if i == 80:
                w.proc.send_signal(signal.SIGKILL)
            if i == 120:
                worker_factory(demo_bundle, port=w.port)
                wait_for(circuit_closing(rt), what="the health probe to find the restarted worker")
            if i == 240:
                link.reset()
            if i >= 120:
                time.sleep(0.02)  # a camera's pace, so the health probe gets its chance
            yield xs[i % FRAMES]

    with LinkProxy(w.address) as link, EdgeRuntime(demo_bundle, cloud=link.address, deadline_ms=BUDGET_MS) as rt:
        for i, y in enumerate(rt.stream(source(320), max_in_flight=4)):
            ledger.record(i, y, rt.last_trace.total_ms, rt)
        counters = rt.counters
    ledger.check(320)
    assert ledger.paths[:80].count("cloud") >= 75
    assert ledger.paths[84:120].count("fallback") == 36, "dead worker: every frame finished locally"
    assert ledger.paths[-40:].count("cloud") >= 36, "streaming resumed after the restart and the reset"
    assert counters.cloud + counters.fallbacks == 320
    assert ledger.reasons["worker unavailable"] + ledger.reasons["stream broke"] >= 1, ledger.reasons


def _hung(w) -> Callable[[bool], None]:
    """SIGSTOP/SIGCONT: the worker's sockets stay open but nothing answers, the fault no error reports."""
    return lambda on: os.kill(w.proc.pid, signal.SIGSTOP if on else signal.SIGCONT)


def test_several_workers_one_hung_one_killed(demo_bundle, worker_factory, frames):
    """Three workers behind round_robin: one hangs (SIGSTOP), then another dies (SIGKILL) with calls in flight."""
    xs, want = frames
    workers = [worker_factory(demo_bundle) for _ in range(3)]
    ledger = Ledger(want)
    stop_hang = _hung(workers[0])
    with EdgeRuntime(demo_bundle, cloud=[w.address for w in workers], deadline_ms=BUDGET_MS) as rt:

        def run(first: int, n: int, clients: int = 3) -> None:
            def client(k: int) -> None:
                with EdgeRuntime(demo_bundle, cloud=[w.address for w in workers], deadline_ms=BUDGET_MS) as own:
                    for i in range(first + k, first + n, clients):
                        ledger.infer(own, xs, i)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(1, clients)]
            for t in threads:
                t.start()
            for i in range(first, first + n, clients):
                ledger.infer(rt, xs, i)
            for t in threads:
                t.join(timeout=120)

        run(0, 60)
        healthy = ledger.paths.count("cloud")
        stop_hang(True)
        try:
            run(60, 90)
            hung = Counter(ledger.paths[60:150])
            threading.Timer(0.3, workers[1].kill).start()  # dies while calls are in flight
            run(150, 90)
        finally:
            stop_hang(False)
        # the stopped worker drains what it queued (all of it expired) and answers again
        probe = WorkerClient(workers[0].address)
        try:
            wait_for(lambda: probe.serving(timeout=1.0), what="the resumed worker")
        finally:
            probe.close()
        wait_for(circuit_closing(rt), what="the circuit to close")
        run(240, 60)
    ledger.check(300)
    assert healthy == 60
    assert hung["cloud"] >= 30 and hung["fallback"] >= 1, hung  # requests on the hung worker time out, the rest answer
    assert ledger.reasons["deadline exceeded"] >= 1, ledger.reasons
    assert ledger.paths[-30:].count("cloud") >= 28, ledger.paths[-30:]
    assert workers[0].proc.poll() is None and workers[2].proc.poll() is None


# -- credentials: a secured worker, edges with the wrong ones ----------------------------------------

pki = security.pki  # the fixture with throwaway CAs and certificates
TOKEN = security.TOKEN


@pytest.fixture(scope="module")
def secured(demo_bundle, pki, tmp_path_factory, module_worker_factory) -> tuple[str, Path]:
    """A worker with TLS and a bearer token, at its most verbose (-v): its address and its log."""
    d = tmp_path_factory.mktemp("secured")
    (d / "token").write_text(TOKEN + "\n")
    w = module_worker_factory(demo_bundle, global_args=["-v"], tls=ClientTLS(root_ca=pki.ca),
                              args=["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                                    "--token-file", str(d / "token")])
    return w.address, w.log


@pytest.mark.parametrize("who", ["plaintext", "wrong-token", "other-ca", "right"])
def test_edges_reach_a_secured_worker_only_with_tls_and_the_token(secured, pki, demo_bundle, frames, who, caplog):
    """No plaintext fallback, no answer without the token; every request still answered; no secret in any log."""
    caplog.set_level(logging.DEBUG)
    xs, want = frames
    address, log = secured
    wrong = TOKEN[::-1]
    tls = {"plaintext": None, "other-ca": ClientTLS(root_ca=pki.other_ca)}.get(who, ClientTLS(root_ca=pki.ca))
    ledger = Ledger(want)
    with EdgeRuntime(demo_bundle, cloud=address, tls=tls, token=wrong if who == "wrong-token" else TOKEN,
                     deadline_ms=BUDGET_MS) as rt:
        for i in range(20):
            ledger.infer(rt, xs, i)
    ledger.check(20)
    if who == "right":
        assert ledger.paths == ["cloud"] * 20
    else:
        assert "cloud" not in ledger.paths and ledger.reasons["circuit open"] >= 15, ledger.reasons
        first = {"wrong-token": "worker refused our credentials"}.get(who, "worker unavailable")
        assert ledger.reasons[first] >= 1, ledger.reasons
    if who == "wrong-token":  # regression: the open health service half-opened the circuit for every other request
        assert ledger.reasons["worker refused our credentials"] <= 3, ledger.reasons
    worker_log = log.read_text()
    for secret in (TOKEN, wrong, pki.server.key.read_text().splitlines()[1]):
        assert secret not in worker_log and secret not in caplog.text

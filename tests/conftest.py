"""Shared fixtures: the demo CNN, a bundle cut from it, and real worker processes.

Set ``SPLITPOINT_TEST_WORKER_CPUS`` (for example ``0.25``) to run every worker
the tests start under that CPU quota (``testbed.device.CpuLimit``), from its
start-up on: the suite must pass on a slow server as on a fast one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from edge.client import ClientTLS
from testbed.demo import CUT, free_port, spawn_worker, wait_serving
from testbed.device import CpuLimit
from testbed.models import save_demo_cnn

WORKER_CPUS = "SPLITPOINT_TEST_WORKER_CPUS"
GATED_WORKER = Path(__file__).with_name("gated_worker.py")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    return save_demo_cnn(tmp_path_factory.mktemp("model") / "democnn.onnx")


@pytest.fixture(scope="session")
def demo_bundle(demo_model, tmp_path_factory) -> Path:
    """The demo CNN cut inside its residual block (two tensors cross) and at a single tensor."""
    from partitioner import split

    out = tmp_path_factory.mktemp("bundles") / "democnn"
    split(demo_model, out, at=[CUT, ["pool.out"]])
    return out


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "the worker") -> None:
    """Poll ``condition`` until it holds: tests wait on state (gauges, circuit, logs), never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def circuit_closing(rt) -> Callable[[], bool]:
    """Whether ``rt``'s background probe has found its worker again (the circuit is no longer open)."""
    from edge.breaker import State

    return lambda: rt.breaker.state is not State.OPEN


class Gate:
    """Holds every computation of a worker started with it while closed (tests/gated_worker.py)."""

    def __init__(self, path: Path):
        self.path = path

    def close(self) -> None:
        self.path.touch()

    def open(self) -> None:
        self.path.unlink(missing_ok=True)


class RunningWorker:
    """A ``splitpoint [GLOBAL_ARGS] serve`` process; ``args`` are extra serve flags, ``tls`` how to reach it if they
    turn TLS on, ``gate`` one that holds its computations while closed."""

    def __init__(self, bundles: list[Path], log: Path, port: int | None = None, args: Sequence[str] = (),
                 tls: ClientTLS | None = None, gate: Gate | None = None, global_args: Sequence[str] = ()):
        self.bundles = bundles
        self.log = log
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = list(args)
        self.tls = tls
        self.gate = gate
        self.global_args = list(global_args)
        self.proc: subprocess.Popen | None = None
        self._limit: CpuLimit | None = None

    def start(self) -> RunningWorker:
        launcher = [sys.executable, "-m", "splitpoint"] if self.gate is None else \
            [sys.executable, str(GATED_WORKER), str(self.gate.path)]
        launcher += self.global_args
        self.proc = spawn_worker(self.bundles, self.port, self.log, self.args, launcher)
        cpus = os.environ.get(WORKER_CPUS)
        if cpus:
            self._limit = CpuLimit(float(cpus), self.proc.pid).__enter__()
            method = self._limit.method
            if not method.startswith("cgroup"):  # pinning to a core is no quarter of one
                self.kill()
                raise RuntimeError(f"{WORKER_CPUS}={cpus}: no cgroup CPU quota could be made here ({method}); "
                                   "it needs root on Linux")
        wait_serving(self.proc, self.port, self.log, tls=self.tls)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._limit is not None:
            self._limit.__exit__(None, None, None)
            self._limit = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@contextmanager
def _workers(directory: Path) -> Iterator[Callable[..., RunningWorker]]:
    """A factory of real `splitpoint serve` processes on free loopback ports; all are killed on exit."""
    started: list[RunningWorker] = []

    def make(*bundles: Path, port: int | None = None, args: Sequence[str] = (), tls: ClientTLS | None = None,
             gate: Gate | None = None, global_args: Sequence[str] = ()) -> RunningWorker:
        w = RunningWorker(list(bundles), directory / f"worker{len(started)}.log", port, args, tls, gate, global_args)
        started.append(w)
        return w.start()

    try:
        yield make
    finally:
        for w in started:
            w.kill()


@pytest.fixture
def worker_factory(tmp_path) -> Iterator[Callable[..., RunningWorker]]:
    """Start real `splitpoint serve` processes for one test: ``make(*bundles, port=, args=, tls=, gate=, global_args=)``."""
    with _workers(tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def module_worker_factory(tmp_path_factory) -> Iterator[Callable[..., RunningWorker]]:
    """Like ``worker_factory``, for workers a whole test module shares."""
    with _workers(tmp_path_factory.mktemp("workers")) as make:
        yield make


@pytest.fixture(scope="module")
def worker(demo_bundle, tmp_path_factory) -> Iterator[RunningWorker]:
    """One worker serving the demo bundle, shared by a test module."""
    w = RunningWorker([demo_bundle], tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield w
    w.kill()


@pytest.fixture
def image() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}

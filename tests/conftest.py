"""Shared fixtures: the demo CNN, a bundle cut from it, and real worker processes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from edge.client import ClientTLS
from testbed.demo import CUT, free_port, start_worker
from testbed.models import save_demo_cnn


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


class RunningWorker:
    """A ``splitpoint serve`` process; ``args`` are extra serve flags, ``tls`` how to reach it if they turn TLS on."""

    def __init__(self, bundles: list[Path], log: Path, port: int | None = None,
                 args: Sequence[str] = (), tls: ClientTLS | None = None):
        self.bundles = bundles
        self.log = log
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = list(args)
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    def start(self) -> RunningWorker:
        self.proc = start_worker(self.bundles, self.port, self.log, args=self.args, tls=self.tls)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@contextmanager
def _workers(directory: Path) -> Iterator[Callable[..., RunningWorker]]:
    """A factory of real `splitpoint serve` processes on free loopback ports; all are killed on exit."""
    started: list[RunningWorker] = []

    def make(*bundles: Path, port: int | None = None, args: Sequence[str] = (), tls: ClientTLS | None = None) -> RunningWorker:
        w = RunningWorker(list(bundles), directory / f"worker{len(started)}.log", port, args, tls)
        started.append(w)
        return w.start()

    try:
        yield make
    finally:
        for w in started:
            w.kill()


@pytest.fixture
def worker_factory(tmp_path) -> Iterator[Callable[..., RunningWorker]]:
    """Start real `splitpoint serve` processes for one test: ``make(*bundles, port=, args=, tls=)``."""
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

"""Shared fixtures: the demo CNN, a bundle cut from it, and real worker processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

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
    def __init__(self, bundles: list[Path], log: Path, port: int | None = None):
        self.bundles = bundles
        self.log = log
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RunningWorker:
        self.proc = start_worker(self.bundles, self.port, self.log)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def worker_factory(tmp_path) -> Iterator:
    """Start real `splitpoint serve` processes on free loopback ports; all are killed at the end."""
    started: list[RunningWorker] = []

    def make(*bundles: Path, port: int | None = None) -> RunningWorker:
        w = RunningWorker(list(bundles), tmp_path / f"worker{len(started)}.log", port).start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


@pytest.fixture(scope="module")
def worker(demo_bundle, tmp_path_factory) -> Iterator[RunningWorker]:
    """One worker serving the demo bundle, shared by a test module."""
    w = RunningWorker([demo_bundle], tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield w
    w.kill()


@pytest.fixture
def image() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}

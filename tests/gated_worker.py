"""``splitpoint serve`` whose every computation waits while a gate file exists: ``gated_worker.py GATE serve ...``.

Tests that need a request to occupy the worker (to queue others behind it,
let their deadlines pass, or drain it) close the gate, send the request, and
open the gate once they have arranged what happens around it. The request
then holds the compute slot exactly as long as the test needs, on a fast CPU
or at a quarter of a core, where a slow model only holds it for as long as
that CPU takes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cloud import repository
from splitpoint.backends import Session
from splitpoint.cli import main

POLL_S = 0.005


class GatedSession:
    """A session whose ``run`` starts only while ``gate`` does not exist."""

    def __init__(self, session: Session, gate: Path):
        self._session = session
        self._gate = gate

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        while self._gate.exists():
            time.sleep(POLL_S)
        return self._session.run(feeds)


def _gated_open(gate: Path):
    ungated = repository.SessionSettings.open

    def open_(settings: repository.SessionSettings, path: Path) -> Session:
        return GatedSession(ungated(settings, path), gate)

    return open_


if __name__ == "__main__":
    repository.SessionSettings.open = _gated_open(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

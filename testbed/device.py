"""Device emulation: run the edge side on a fraction of a core.

A 2-core machine can stand in for a phone talking to a server when the edge
process gets, say, a quarter of a core. The CPU quota comes from a cgroup
(v1 ``cpu`` controller or v2 ``cpu.max``) when this process may create one
(root on Linux); otherwise it falls back to pinning to one core, which cannot
go below a whole core. ``method`` says which was used, so a benchmark can
state it.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
# A quota is only felt once it is spent within a period: with the kernel's usual
# 100 ms period a 5 ms inference runs at full speed and then the process sleeps.
# A short period slows every call of more than a few ms evenly, as a slower core
# would, and keeps latencies from moving in steps of a whole period (at 10 ms, one
# period more is +10 % on a 100 ms call). The quota's floor sets how short it can be.
PERIOD_US = 4_000
MIN_QUOTA_US = 1_000  # the kernel's floor


class CpuLimit:
    """A CPU quota of ``cpus`` cores for the processes moved into it.

    Use as a context manager around the code that should run slowly:
    ``with CpuLimit(0.25): rt.infer(x)`` moves this whole process (all its
    threads) into the group and back out on exit. Child processes started
    inside inherit the limit; start the worker before entering. With ``pid``
    another process is limited instead (a worker under test), and the group
    is removed on exit once that process has ended or been moved back.
    """

    def __init__(self, cpus: float, pid: int | None = None):
        if not cpus > 0:
            raise ValueError(f"cpus must be positive, got {cpus}")
        self.cpus = cpus
        self.pid = os.getpid() if pid is None else pid
        self.method = "none"
        self._group: Path | None = None
        self._previous_affinity: set[int] | None = None
        self._previous_group: Path | None = None

    def __enter__(self) -> CpuLimit:
        self._group, self.method = _make_group(self.cpus)
        if self._group is not None:
            self._previous_group = _current_group(self.method, self.pid)
            (self._group / "cgroup.procs").write_text(str(self.pid))
        else:
            self._previous_affinity = os.sched_getaffinity(self.pid)
            pin(self.pid, {min(self._previous_affinity)})
            self.method = "affinity (1 core; a cgroup quota was not available)"
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._group is not None:
                (self._previous_group / "cgroup.procs").write_text(str(self.pid))  # type: ignore[operator]
            elif self._previous_affinity is not None:
                pin(self.pid, self._previous_affinity)
        except ProcessLookupError:  # the limited process has ended: nothing to move back
            pass
        if self._group is not None:
            self._group.rmdir()
            self._group = None


def pin(pid: int, cpus: set[int]) -> None:
    """Keep every thread of process ``pid`` on ``cpus``; threads they start later inherit it.

    ``os.sched_setaffinity(pid, ...)`` alone moves one thread: a process's other
    threads (gRPC's, onnxruntime's) would keep running anywhere.
    """
    tasks = Path(f"/proc/{pid}/task")
    for tid in os.listdir(tasks) if tasks.is_dir() else [str(pid)]:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def _make_group(cpus: float) -> tuple[Path | None, str]:
    name = f"splitpoint-{uuid.uuid4().hex[:8]}"
    period = max(PERIOD_US, math.ceil(MIN_QUOTA_US / cpus))
    quota = int(cpus * period)
    try:
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            group = CGROUP_V1 / name
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            return group, f"cgroup v1 cpu quota {quota}/{period} us"
        if (CGROUP_V2 / "cgroup.controllers").exists() and "cpu" in (CGROUP_V2 / "cgroup.controllers").read_text():
            group = CGROUP_V2 / name
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota} {period}")
            return group, f"cgroup v2 cpu.max {quota} {period}"
    except OSError:
        pass
    return None, "none"


def _current_group(method: str, pid: int) -> Path:
    """The cgroup process ``pid`` is in now, to return it there."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if method.startswith("cgroup v1") and "cpu" in controllers.split(","):
            return CGROUP_V1 / path.lstrip("/")
        if method.startswith("cgroup v2") and controllers == "":
            return CGROUP_V2 / path.lstrip("/")
    return CGROUP_V1 if method.startswith("cgroup v1") else CGROUP_V2

"""Device emulation slows this process down as much as the quota says."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.device import CpuLimit, pin


def _burn(cpu_seconds: float) -> float:
    """Spin for ``cpu_seconds`` of this thread's CPU time; return the wall time it took."""
    start, cpu0 = time.perf_counter(), time.thread_time()
    x = 0
    while time.thread_time() - cpu0 < cpu_seconds:
        x += 1
    return time.perf_counter() - start


def test_quarter_core_takes_four_times_as_long():
    with CpuLimit(0.25) as limit:
        if not limit.method.startswith("cgroup"):
            pytest.skip(f"no cgroup CPU quota on this machine ({limit.method})")
        wall = _burn(0.3)
    assert wall == pytest.approx(1.2, rel=0.15), (wall, limit.method)
    assert _burn(0.1) < 0.2  # and back at full speed afterwards


def test_a_short_call_is_slowed_too():
    """An inference of a few ms must feel the quota, not run at full speed inside one long period."""
    with CpuLimit(0.25) as limit:
        if not limit.method.startswith("cgroup"):
            pytest.skip(f"no cgroup CPU quota on this machine ({limit.method})")
        walls = sorted(_burn(0.008) for _ in range(7))
    assert walls[3] > 0.020, (walls, limit.method)  # 8 ms of CPU at a quarter core: about 32 ms


def test_another_process_can_be_limited_and_the_group_goes_with_it():
    """The test workers' quota (SPLITPOINT_TEST_WORKER_CPUS): a child with all its threads in the group, the group
    removed once the child has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE, text=True)
    try:
        limit = CpuLimit(0.25, child.pid).__enter__()
        if not limit.method.startswith("cgroup"):
            limit.__exit__(None, None, None)
            pytest.skip(f"no cgroup CPU quota on this machine ({limit.method})")
        group = limit._group
        assert str(child.pid) in (group / "cgroup.procs").read_text().split()
        assert str(os.getpid()) not in (group / "cgroup.procs").read_text().split()  # this process is not limited
        child.communicate("\n", timeout=10)
        limit.__exit__(None, None, None)  # the child is gone: nothing to move back, the group is removed
        assert not group.exists()
    finally:
        child.kill()


def test_bad_quota():
    with pytest.raises(ValueError):
        CpuLimit(0)


def test_pin_moves_every_thread_of_a_process():
    """Pinning the worker or link proxy to a core must pin gRPC's and onnxruntime's threads too, not just the main one."""
    if len(os.sched_getaffinity(0)) < 2 or not Path("/proc/self/task").is_dir():
        pytest.skip("needs two CPUs and /proc")
    code = ("import threading, time, sys\n"
            "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() for _ in range(3)]\n"
            "print('up', flush=True); sys.stdin.readline()\n"
            "threading.Thread(target=lambda: print(sorted(__import__('os').sched_getaffinity(0)), flush=True)).start()\n"
            "time.sleep(0.2)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        cpu = max(os.sched_getaffinity(0))
        pin(child.pid, {cpu})
        tasks = os.listdir(f"/proc/{child.pid}/task")
        assert len(tasks) >= 4
        assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tasks)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == f"[{cpu}]"  # a thread started afterwards stays there too
    finally:
        child.kill()
        child.wait()

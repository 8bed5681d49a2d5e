"""1000 requests while the worker is killed, black-holed and restarted: all answered, all right, none late."""

from __future__ import annotations

import time

import numpy as np
from conftest import circuit_closing, wait_for

from edge import EdgeRuntime
from splitpoint.compare import difference
from testbed.linkproxy import LinkProxy

BUDGET_MS = 150.0
SLACK_MS = 60.0  # scheduling on a shared 2-core machine, on top of budget + prefix + local suffix


def test_kill_blackhole_restart_during_1000_requests(demo_bundle, worker_factory):
    w = worker_factory(demo_bundle)
    rng = np.random.default_rng(11)
    frames = [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(20)]
    with EdgeRuntime(demo_bundle, split="local") as local:
        want = [local.infer(x) for x in frames]

    def restart():
        worker_factory(demo_bundle, port=w.port)

    def blackhole_on():
        link.blackhole(True)

    def blackhole_off():
        link.blackhole(False)
        link.reset()  # the connection that lost bytes is dropped, as a real middlebox would

    events = {150: w.kill, 300: restart, 500: blackhole_on, 650: blackhole_off}
    late, wrong, paths = [], 0, []
    with LinkProxy(w.address) as link, EdgeRuntime(demo_bundle, cloud=link.address, deadline_ms=BUDGET_MS) as rt:
        for i in range(1000):
            if i in events:
                events[i]()
            x = frames[i % len(frames)]
            start = time.perf_counter()
            y = rt.infer(x)
            took = (time.perf_counter() - start) * 1e3
            t = rt.last_trace
            if took > BUDGET_MS + t.edge_ms + t.local_suffix_ms + SLACK_MS:
                late.append((i, round(took, 1), t.path, t.fallback_reason))
            wrong += not difference(want[i % len(frames)], y).ok
            paths.append(t.path)
            if i in (300, 650):  # the health probe finds the worker again
                wait_for(circuit_closing(rt), what="the health probe to find the worker")
        counters = rt.counters
    assert wrong == 0
    assert not late, late[:10]
    assert counters.requests == 1000 and counters.cloud + counters.fallbacks == 1000
    assert paths[:150].count("cloud") == 150
    assert paths[160:300].count("fallback") == 140  # worker dead
    assert "cloud" in paths[300:500] and paths[480:500].count("cloud") == 20  # back after the restart
    assert paths[520:650].count("fallback") == 130  # black-holed
    assert paths[-50:].count("cloud") == 50  # and back again
    assert counters.fallback_reasons["circuit open"] > 200

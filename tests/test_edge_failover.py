"""Several workers behind one channel: gRPC's round_robin spreads requests and skips the dead."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge import EdgeRuntime
from edge.client import ClientTLS, channel_target
from splitpoint.compare import difference
from splitpoint.errors import SplitpointError
from testbed.demo import free_port


def _images(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(n)]


def _answered(metrics_port: int) -> int:
    """Requests a worker answered OK, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        families = text_string_to_metric_families(r.read().decode())
    return int(sum(s.value for f in families if f.name == "splitpoint_worker_requests"
                   for s in f.samples if s.name.endswith("_total") and s.labels.get("code") == "OK"))


@pytest.fixture(scope="module")
def expected(demo_bundle):
    images = _images(60)
    with EdgeRuntime(demo_bundle, split="local") as local:
        return images, [local.infer(x) for x in images]


def test_requests_spread_over_workers_and_survive_losing_them(demo_bundle, worker_factory, expected):
    images, want = expected
    ports = [free_port(), free_port()]
    workers = [worker_factory(demo_bundle, args=["--metrics-port", str(p)]) for p in ports]
    with EdgeRuntime(demo_bundle, cloud=[w.address for w in workers], failure_threshold=1) as rt:

        def run(batch: slice) -> list[str]:
            paths = []
            for x, ref in zip(images[batch], want[batch]):
                assert difference(ref, rt.infer(x)).ok
                paths.append(rt.last_trace.path)
            return paths

        assert run(slice(0, 20)) == ["cloud"] * 20
        answered = [_answered(p) for p in ports]
        assert sum(answered) == 20 and min(answered) >= 5, f"round_robin should use both workers: {answered}"

        workers[0].kill()
        assert run(slice(20, 40)) == ["cloud"] * 20, rt.counters  # retried on the live worker within the budget
        assert rt.breaker.opened == 0 and _answered(ports[1]) == answered[1] + 20

        workers[1].kill()
        assert run(slice(40, 60)) == ["fallback"] * 20
        assert rt.breaker.opened == 1 and rt.counters.fallback_reasons["circuit open"] == 19


def test_a_worker_serving_another_model_version_is_skipped(demo_bundle, worker_factory, tmp_path, expected):
    """Client-side health checking keeps requests off a worker that is up with the wrong version."""
    from partitioner import split
    from splitpoint.bundle import Bundle
    from testbed.models import save_demo_cnn

    manifest = Bundle(demo_bundle).manifest
    at = [[t.name for t in s.cut] for s in manifest.splits if s.edge_file]
    stale = split(save_demo_cnn(tmp_path / "democnn.onnx", seed=42), tmp_path / "stale", at=at, name=manifest.name)
    workers = [worker_factory(stale.root), worker_factory(demo_bundle)]
    images, want = expected
    with EdgeRuntime(demo_bundle, cloud=",".join(w.address for w in workers)) as rt:
        for x, ref in zip(images[:10], want[:10]):
            assert difference(ref, rt.infer(x)).ok
            assert rt.last_trace.path == "cloud", rt.last_trace


@pytest.mark.parametrize(
    "cloud, needle",
    [
        (["workerA:8500", "127.0.0.1:8501"], "'workerA:8500': several workers must be given as IP:PORT"),
        (["127.0.0.1:8500", "[::1]:8501"], "mix IPv4 and IPv6"),
        (["127.0.0.1", "127.0.0.1:8501"], "'127.0.0.1': several workers"),
        (" , ", "no worker address"),
    ],
    ids=["host-name", "mixed-families", "no-port", "empty"],
)
def test_bad_worker_addresses_are_one_clear_error(demo_bundle, cloud, needle):
    with pytest.raises(SplitpointError) as info:
        EdgeRuntime(demo_bundle, cloud=cloud)
    assert needle in str(info.value)


def test_tls_to_several_workers_needs_the_name_in_their_certificates(demo_bundle):
    with pytest.raises(SplitpointError, match=r"TLS to several workers needs ClientTLS\(server_name=...\)"):
        EdgeRuntime(demo_bundle, cloud=["127.0.0.1:8500", "127.0.0.1:8501"], tls=ClientTLS(root_ca="ca.pem"))


def test_several_addresses_make_one_target_for_grpcs_resolver():
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert channel_target(["[::1]:1", "[fe80::2]:2"]) == "ipv6:[::1]:1,[fe80::2]:2"
    assert channel_target(["workers.internal:8500"]) == "workers.internal:8500"  # one DNS name, as given


def test_closing_with_the_circuit_open_does_not_wait_for_the_prober(demo_bundle, image):
    rt = EdgeRuntime(demo_bundle, cloud=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], failure_threshold=1)
    rt.infer(image)
    assert rt.breaker.opened == 1
    start = time.perf_counter()
    rt.close()
    assert time.perf_counter() - start < 1.0

"""The link proxy shapes real TCP traffic as it says: bandwidth, delay, black-hole, reset."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from testbed.linkproxy import LinkProcess, LinkProxy


class _Sink(socketserver.BaseRequestHandler):
    """Reads a 4-byte length, then that many bytes, then answers b'ok'; repeats."""

    def handle(self):
        f = self.request.makefile("rb")
        while header := f.read(4):
            n = int.from_bytes(header, "big")
            f.read(n)
            self.request.sendall(b"ok")


@pytest.fixture(scope="module")
def sink():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _send(address: str, nbytes: int, timeout: float = 10.0) -> float:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        start = time.perf_counter()
        s.sendall(nbytes.to_bytes(4, "big") + b"x" * nbytes)
        assert s.recv(2) == b"ok"
        return time.perf_counter() - start


def test_throttled_transfer_takes_the_time_the_bandwidth_says(sink):
    with LinkProxy(sink, bandwidth_bps=8e6) as link:
        took = min(_send(link.address, 1_000_000) for _ in range(2))
    assert took == pytest.approx(1.0, rel=0.10), took  # 1 MB at 8 Mbit/s


def test_delay_adds_a_round_trip(sink):
    with LinkProxy(sink, delay_ms=50) as link:
        took = _send(link.address, 10)
    assert took == pytest.approx(0.100, abs=0.02)


def test_changes_apply_while_running(sink):
    with LinkProxy(sink, bandwidth_bps=80e6) as link:
        fast = _send(link.address, 1_000_000)
        link.set(bandwidth_bps=8e6)
        slow = _send(link.address, 1_000_000)
        link.set(bandwidth_bps=None)
        unlimited = _send(link.address, 1_000_000)
    assert fast == pytest.approx(0.1, rel=0.3) and slow == pytest.approx(1.0, rel=0.1) and unlimited < 0.1


def test_blackhole_answers_nothing_and_reset_aborts(sink):
    with LinkProxy(sink) as link:
        link.blackhole(True)
        with pytest.raises(socket.timeout):
            _send(link.address, 100, timeout=0.3)
        link.blackhole(False)
        assert _send(link.address, 100) < 1.0
        host, port = link.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall((3).to_bytes(4, "big") + b"abc")
            assert s.recv(2) == b"ok"
            link.reset()
            time.sleep(0.1)
            with pytest.raises((ConnectionError, OSError)):
                s.sendall((3).to_bytes(4, "big") + b"abc")
                if not s.recv(2):
                    raise ConnectionResetError("closed")


def test_link_process_shapes_and_takes_commands(sink):
    """The proxy as a process of its own: the same shaping, changed by commands on its stdin."""
    with LinkProcess(sink, bandwidth_bps=8e6) as link:
        slow = _send(link.address, 500_000)
        link.command("bandwidth none")
        link.command("delay 0")
        fast = _send(link.address, 500_000)
        with pytest.raises(ValueError, match="unknown command 'bandwidth fast please'"):
            link.command("bandwidth fast please")
        link.command("blackhole on")
        with pytest.raises(socket.timeout):
            _send(link.address, 10, timeout=0.5)
    assert slow == pytest.approx(0.5, rel=0.10), slow  # 0.5 MB at 8 Mbit/s
    assert fast < slow / 3, (fast, slow)

"""The link proxy against a kernel-shaped link: the same throttled transfers, both ways, compared once.

The kernel link is a network namespace joined to this one by a veth pair whose
sending side has a tbf (token bucket) qdisc at the bandwidth; it needs root and
``ip``/``tc`` (this machine has no netem, so no delay: the comparison is of
bandwidth only). The proxy is ``testbed.linkproxy.LinkProcess`` at the same
bandwidth, in front of a sink on loopback. A transfer is N bytes sent over a
fresh TCP connection until the sink acknowledges the last byte; the two links
alternate, ``--repeat`` times per size, and the medians are compared with
what the bandwidth says (N * 8 / rate).

    sudo .venv/bin/python benchmarks/kernel_link.py [--mbit 20] [--sizes 262144,1048576,4194304] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from report import machine, print_table

from testbed.demo import free_port
from testbed.linkproxy import LinkProcess

NS_ADDR, HOST_ADDR = "10.231.0.2", "10.231.0.1"


def sink(address: str) -> None:
    """Accept connections forever; read a 12-byte length, then that many bytes, then answer one byte."""
    host, port = address.rsplit(":", 1)
    with socket.create_server((host, int(port))) as server:
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            with conn:
                want = int(_read(conn, 12))
                while want > 0:
                    want -= len(conn.recv(min(want, 1 << 16)))
                conn.sendall(b"k")


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += conn.recv(n - len(data))
    return data


def transfer(address: str, nbytes: int, payload: bytes) -> float:
    """Seconds from connecting to the sink's acknowledgement of ``nbytes``."""
    host, port = address.rsplit(":", 1)
    start = time.perf_counter()
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"%012d" % nbytes)
        sent = 0
        while sent < nbytes:
            chunk = payload[: min(len(payload), nbytes - sent)]
            conn.sendall(chunk)
            sent += len(chunk)
        if conn.recv(1) != b"k":
            raise RuntimeError("the sink did not acknowledge")
    return time.perf_counter() - start


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _start_sink(prefix: list[str], address: str) -> subprocess.Popen:
    proc = subprocess.Popen([*prefix, sys.executable, __file__, "--sink", address], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    if proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
        proc.kill()
        raise RuntimeError(f"the sink at {address} did not start")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mbit", type=float, default=20.0, help="bandwidth of both links (default: 20)")
    ap.add_argument("--sizes", default="262144,1048576,4194304", help="bytes per transfer, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sink", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        sink(args.sink)
        return
    if os.geteuid() != 0:
        raise SystemExit("kernel_link.py needs root (ip netns, tc)")
    ns, veth = f"sp{uuid.uuid4().hex[:6]}", f"sp{uuid.uuid4().hex[:6]}"
    sizes = [int(s) for s in args.sizes.split(",")]
    payload = os.urandom(1 << 16)
    procs: list[subprocess.Popen] = []
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p")
        _run("ip", "link", "set", veth + "p", "netns", ns)
        _run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", veth)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NS_ADDR}/24", "dev", veth + "p")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", veth + "p", "up")
        # burst: 10 ms of the rate (at least one 1514-byte frame); latency: the queue the bucket may hold
        burst = max(int(args.mbit * 1e6 / 8 / 100), 1600)
        _run("tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", f"{args.mbit}mbit", "burst", str(burst),
             "latency", "200ms")
        kernel = f"{NS_ADDR}:{free_port()}"
        procs.append(_start_sink(["ip", "netns", "exec", ns], kernel))
        local = f"127.0.0.1:{free_port()}"
        procs.append(_start_sink([], local))
        rows = []
        with LinkProcess(local, bandwidth_bps=args.mbit * 1e6) as proxy:
            for n in sizes:
                k_s, p_s = [], []
                for _ in range(args.repeat):
                    k_s.append(transfer(kernel, n, payload))
                    p_s.append(transfer(proxy.address, n, payload))
                expected = n * 8 / (args.mbit * 1e6)
                k, p = statistics.median(k_s), statistics.median(p_s)
                rows.append([f"{n:,}", f"{expected * 1e3:.0f}", f"{k * 1e3:.0f} ({k / expected:.2f}x)",
                             f"{p * 1e3:.0f} ({p / expected:.2f}x)", f"{p / k:.2f}"])
    finally:
        for proc in procs:
            proc.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    print(f"Machine: {machine()}. {args.mbit:g} Mbit/s, median of {args.repeat} alternating transfers per size, "
          "each on a new TCP connection (so slow start and the handshake are in both).\n")
    print_table(["bytes", "bandwidth says ms", "tbf in a netns ms", "LinkProxy ms", "proxy / tbf"], rows)


if __name__ == "__main__":
    main()

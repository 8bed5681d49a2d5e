"""A link emulator on loopback: a TCP proxy that shapes what passes through it.

Put it between the edge and a worker to give the connection a bandwidth
(token bucket per direction, shared by all connections), a one-way delay with
optional jitter, or a failure: black-hole (bytes are swallowed, nothing is
answered, the sender waits for its deadline) or reset (every connection is
aborted). Everything can change while traffic flows.

    with LinkProxy("127.0.0.1:8500", bandwidth_bps=10e6, delay_ms=15) as link:
        rt = EdgeRuntime(bundle, cloud=link.address)
        link.set(bandwidth_bps=1e6)      # the link gets slow
        link.blackhole(True)             # the link goes dark

It also runs as a process of its own, so that its copying does not share a
Python interpreter (and its GIL) with the edge it shapes:

    python -m testbed.linkproxy 127.0.0.1:8500 --bandwidth-mbit 10 --delay-ms 15

It prints its address on the first line and then takes commands on stdin,
one per line: ``bandwidth MBIT`` (``bandwidth none`` lifts the limit),
``delay MS``, ``jitter MS``, ``blackhole on|off``, ``reset``; each is
acknowledged with ``ok`` (or ``error: ...``) on stdout. ``bytes`` is answered
``ok UP DOWN``: the bytes delivered each way so far.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

CHUNK = 16 * 1024


@dataclass
class Shape:
    bandwidth_bps: float | None = None  # None: unlimited
    delay_ms: float = 0.0  # one way
    jitter_ms: float = 0.0  # uniform in [-jitter, +jitter], never reorders
    blackhole: bool = False


class _Direction:
    """One direction of the link: a serialising queue at the link's bandwidth."""

    def __init__(self) -> None:
        self.free_at = 0.0  # when the link finishes sending what it already has
        self.last_delivery = 0.0

    def schedule(self, nbytes: int, shape: Shape, now: float) -> float:
        """When a chunk of ``nbytes`` that arrives ``now`` reaches the other side."""
        start = max(now, self.free_at)
        self.free_at = start + (nbytes * 8 / shape.bandwidth_bps if shape.bandwidth_bps else 0.0)
        jitter = random.uniform(-shape.jitter_ms, shape.jitter_ms) if shape.jitter_ms else 0.0
        deliver = self.free_at + max(shape.delay_ms + jitter, 0.0) / 1e3
        self.last_delivery = max(deliver, self.last_delivery)  # in order
        return self.last_delivery


class LinkProxy:
    def __init__(
        self,
        target: str,
        bandwidth_bps: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        listen: str = "127.0.0.1:0",
    ):
        self.target_host, target_port = target.rsplit(":", 1)
        self.target_port = int(target_port)
        self._listen_host, listen_port = listen.rsplit(":", 1)
        self._listen_port = int(listen_port)
        self.shape = Shape(bandwidth_bps, delay_ms, jitter_ms)
        self._up, self._down = _Direction(), _Direction()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="linkproxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LinkProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- control, from any thread -------------------------------------------

    def set(self, bandwidth_bps: float | None = ..., delay_ms: float | None = None, jitter_ms: float | None = None) -> None:  # type: ignore[assignment]
        """Change the link; ``bandwidth_bps=None`` lifts the limit (omit it to keep the current one)."""
        if bandwidth_bps is not ...:
            self.shape.bandwidth_bps = bandwidth_bps
        if delay_ms is not None:
            self.shape.delay_ms = delay_ms
        if jitter_ms is not None:
            self.shape.jitter_ms = jitter_ms

    def blackhole(self, on: bool = True) -> None:
        """Swallow every byte in both directions (connections stay open, nothing answers)."""
        self.shape.blackhole = on

    def reset(self) -> None:
        """Abort every open connection (the peers see a reset); new ones are accepted."""

        def abort() -> None:
            for w in list(self._writers):
                w.transport.abort()

        self._loop.call_soon_threadsafe(abort)

    # -- the proxy ------------------------------------------------------------

    async def _serve(self):
        return await asyncio.start_server(self._accept, self._listen_host, self._listen_port)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, self._up, "bytes_up"),
                self._pump(server_r, client_w, self._down, "bytes_down"),
            )
        except asyncio.CancelledError:  # stop(): end quietly (asyncio's stream callback would log a cancelled task)
            pass
        finally:
            for w in (client_w, server_w):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: _Direction, counter: str
    ) -> None:
        """Copy ``reader`` to ``writer``, releasing each chunk when the emulated link would deliver it."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)  # a bounded buffer: the sender feels the link

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                at, data = item
                await asyncio.sleep(max(at - time.monotonic(), 0.0))
                writer.write(data)
                await writer.drain()
                setattr(self, counter, getattr(self, counter) + len(data))

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(CHUNK):
                if self.shape.blackhole:
                    continue
                await queue.put((direction.schedule(len(data), self.shape, time.monotonic()), data))
        except (ConnectionError, OSError):
            pass
        finally:
            await queue.put(None)
            try:
                await sender
            except (ConnectionError, OSError):
                pass
            writer.transport.abort()


class LinkProcess:
    """A ``LinkProxy`` in a process of its own, driven through its stdin.

    For benchmarks that slow down their own process (``testbed.device``) or
    that must not share their interpreter's GIL with the link.
    """

    def __init__(self, target: str, bandwidth_bps: float | None = None, delay_ms: float = 0.0):
        argv = [sys.executable, "-m", "testbed.linkproxy", target, "--delay-ms", str(delay_ms)]
        if bandwidth_bps:
            argv += ["--bandwidth-mbit", str(bandwidth_bps / 1e6)]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self._proc.stdout.readline()  # type: ignore[union-attr]
        if not first.startswith("linkproxy listening on "):
            self.close()
            raise RuntimeError(f"the link proxy process did not start: {first!r}")
        self.address = first.split()[-1]

    def command(self, line: str) -> str:
        """Send one control line (see the module docstring); its answer after ``ok``; ValueError if refused."""
        self._proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]
        answer = self._proc.stdout.readline().strip()  # type: ignore[union-attr]
        if answer.split(" ", 1)[0] != "ok":
            raise ValueError(answer)
        return answer[3:]

    @property
    def pid(self) -> int:
        return self._proc.pid

    def bytes(self) -> tuple[int, int]:
        """Bytes delivered so far: edge to worker, worker to edge."""
        up, down = self.command("bytes").split()
        return int(up), int(down)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)

    def __enter__(self) -> LinkProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def command(link: LinkProxy, line: str) -> str | None:
    """Apply one control line (see the module docstring) to ``link``; a query's answer."""
    words = line.split()
    match words:
        case ["bandwidth", "none"]:
            link.set(bandwidth_bps=None)
        case ["bandwidth", mbit]:
            link.set(bandwidth_bps=float(mbit) * 1e6)
        case ["delay", ms]:
            link.set(delay_ms=float(ms))
        case ["jitter", ms]:
            link.set(jitter_ms=float(ms))
        case ["blackhole", ("on" | "off") as state]:
            link.blackhole(state == "on")
        case ["reset"]:
            link.reset()
        case ["bytes"]:
            return f"{link.bytes_up} {link.bytes_down}"
        case _:
            raise ValueError(
                f"unknown command {line.strip()!r}: bandwidth MBIT|none, delay MS, jitter MS, blackhole on|off, reset, bytes"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Shape the TCP traffic to TARGET: bandwidth, one-way delay, jitter; "
        "then change it with commands on stdin (see testbed/linkproxy.py)."
    )
    ap.add_argument("target", help="HOST:PORT to forward to")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to accept on (default: a free loopback port)")
    ap.add_argument("--bandwidth-mbit", type=float, default=None, help="each direction's bandwidth (default: unlimited)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="uniform jitter added to the delay")
    args = ap.parse_args()
    bandwidth = args.bandwidth_mbit * 1e6 if args.bandwidth_mbit else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with LinkProxy(args.target, bandwidth, args.delay_ms, args.jitter_ms, listen=args.listen) as link:
        print(f"linkproxy listening on {link.address}", flush=True)
        try:
            for line in sys.stdin:
                if not line.strip():
                    continue
                try:
                    answer = command(link, line)
                    print("ok" if answer is None else f"ok {answer}", flush=True)
                except ValueError as e:
                    print(f"error: {e}", flush=True)
            threading.Event().wait()  # stdin closed: keep shaping until terminated
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

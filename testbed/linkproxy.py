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
"""

from __future__ import annotations

import asyncio
import random
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

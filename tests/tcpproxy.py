"""A loopback TCP proxy for tests that cut a node off its database without touching the database server.

    async with TcpProxy(5432) as proxy:     # listens on 127.0.0.1:proxy.port, forwards to 127.0.0.1:5432
        ...point the node at proxy.port...
        proxy.mode = "blackhole"            # or "refuse", then back to "forward"

Modes:
- `forward`: connections are relayed both ways.
- `refuse`: every open connection is closed and new ones are refused (the port stops listening, so a
  client sees "connection refused", as when the server is down).
- `blackhole`: new connections are accepted and what they send is read and dropped; open connections
  stop being relayed (both ways). Nothing is ever answered: a hung server or a lost route. Connections
  that lived through a black hole have lost bytes, so going back to `forward` closes them; new ones are
  relayed again.
- `deaf`: as `blackhole`, except that open connections still relay what the client sends: the server gets
  it and acts on it, and its answer is lost on the way back (a COMMIT that lands while its reply does not).

The port stays reserved while the proxy is open, even while it refuses, so switching back never races
another process for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

MODES = ("forward", "refuse", "blackhole", "deaf")
LOOPBACK = "127.0.0.1"


class _Link:
    """One client connection and, unless it arrived in a black hole, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None, blackholed: bool) -> None:
        self.client = client
        self.upstream = upstream
        self.blackholed = blackholed
        self.deaf = False  # the upstream's answers are dropped

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    def __init__(self, upstream_port: int = 5432, upstream_host: str = LOOPBACK, mode: str = "forward") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._mode = mode
        self._holder: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.recorded = bytearray()  # every byte relayed, both ways (what someone on the wire would see)

    async def __aenter__(self) -> "TcpProxy":
        # A bound socket that never listens keeps the port ours while the listener is closed (`refuse`).
        self._holder = self._socket(0)
        self.port = self._holder.getsockname()[1]
        self.mode = self._mode
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop_listening()
        for link in list(self._links):
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._mode = mode
        if mode == "refuse":
            self._stop_listening()
            for link in list(self._links):
                link.abort()
            return
        self._listen()
        for link in list(self._links):
            if mode == "blackhole":
                link.blackholed = True
            elif mode == "deaf":
                link.deaf = True
            elif link.blackholed or link.deaf:
                link.abort()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._links)

    # -- listening ---------------------------------------------------------------------------------------

    def _socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.setblocking(False)
        return sock

    def _listen(self) -> None:
        if self._listener is not None:
            return
        self._listener = self._socket(self.port)
        self._listener.listen(64)
        # A reader callback rather than `loop.sock_accept`: it is removed at once when the listener closes,
        # so no accept is left pending on a closed descriptor that a new socket may reuse.
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept, self._listener)

    def _stop_listening(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _spawn(self, coro) -> asyncio.Task[None]:  # noqa: ANN001
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        self._spawn(self._serve(sock))

    # -- relaying ----------------------------------------------------------------------------------------

    async def _serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        upstream_reader = upstream_writer = None
        if self._mode == "forward":
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.transport.abort()
                return
        link = _Link(writer, upstream_writer, blackholed=upstream_writer is None)
        if self._mode != "forward" and not link.blackholed:  # the mode changed while connecting upstream
            link.abort()
            return
        self._links.add(link)
        try:
            pumps = [self._pump(reader, upstream_writer, link, self.recorded)]
            if upstream_reader is not None:
                pumps.append(self._pump(upstream_reader, writer, link, self.recorded, answers=True))
            await asyncio.gather(*pumps)
        finally:
            self._links.discard(link)
            link.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, link: _Link,
                    recorded: bytearray, answers: bool = False) -> None:
        """Relay until either side closes; while the link is in a black hole (or deaf, for the upstream's
        `answers`), read and drop."""
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if link.blackholed or dst is None or (answers and link.deaf):
                    continue
                recorded += data
                dst.write(data)
                await dst.drain()
        link.abort()  # one side is gone: so is the link

"""A TCP fault proxy: forwards every connection to a target, with a link fault switchable at run time.

    python -m ringcast_tools.chaos.proxy --listen 127.0.0.1:7411 --target 127.0.0.1:7403 --control 127.0.0.1:7412

Each accepted connection is dialed through to `--target`; bytes are copied in both directions in
chunks (at most `chunk_bytes_max` each, at most `chunks_queued_max` waiting per direction, so a
stalled direction pushes back on its sender through TCP flow control instead of growing a buffer).
Which chunk may go out when is decided by the current fault, re-evaluated whenever it changes, so a
change takes effect at once on live connections without restarting anything:

- `pass`: forward at once.
- `delay` (`ms`): every chunk goes out `ms` after it arrived, in each direction, in order; a round
  trip gains 2 × `ms`. Throughput is not capped at one chunk per `ms`: chunks wait side by side.
- `blackhole`: nothing goes out, in either direction; connections stay open. New connections are
  accepted (the client's connect succeeds) but the target is not dialed until the blackhole ends.
  Bytes are held, not discarded: when the fault is lifted they go out in order, which is what TCP
  retransmission does after a partition heals. A client that gives up on a connection that never got
  through (closes it) is closed at once; the target never saw it.
- `reset`: every current connection is closed abruptly (RST, with SO_LINGER 0) on both sides, and
  every new connection is reset as soon as it is accepted.
- `drop` (`probability`, `ms`): a lossy link. Each chunk (and each new connection's dial) is, with
  probability P, held `ms` (default 1,000 ms, longer than the 0.5 s deadlines tests use) as if its
  segment had been lost and retransmitted, and the chunks behind it in that direction wait for it
  (TCP delivers in order). Bytes are never thrown away: TCP never loses bytes in the middle of a
  stream, and doing so would desynchronise HTTP/2 framing rather than model a network. So at the
  gRPC level a dropped chunk is a call that takes `ms` longer, and fails with DEADLINE_EXCEEDED
  when its deadline is shorter. (Refusing new connections outright is `reset`.)

The draws for `drop` come from a `random.Random(--seed)`, printed at start so a run can be replayed.

The proxy holds bytes in user space, so the sender's kernel acknowledges them as usual: a blackhole
here is noticed by deadlines and HTTP/2 ping timeouts, not by TCP's own retransmission timeouts
(TCP_USER_TIMEOUT), which a packet-dropping firewall rule would trigger. With grpcio 1.85, a channel
with `grpc.keepalive_time_ms` 10 s and `grpc.keepalive_timeout_ms` 5 s kept a blackholed stream open
until its deadline; adding `grpc.http2.ping_timeout_ms` 5 s ended it with UNAVAILABLE after 15 s.

The control port speaks HTTP/1.1, one request per connection, JSON answers:
    GET /health                                      → {"ok": true}
    GET /mode                                        → {"mode": "pass", "ms": 0, "probability": 0.0, ...}
    GET /mode?set=delay&ms=200                       → the new state
    GET /mode?set=drop&probability=0.3&ms=1000       → the new state
A bad request gets 400 and {"error": "..."}. `ProxyControl` is the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import random
import secrets
import signal
import socket
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("ringcast.proxy")

chunk_bytes_max = 64 * 1024
"""Largest chunk read from one side before it is forwarded to the other."""

chunks_queued_max = 16
"""Chunks waiting per direction per connection; when full, the proxy stops reading that side."""

connections_max = 256
"""Connections held at once; one more is reset when it is accepted."""

target_connect_timeout_s = 5.0
"""How long dialing the target may take before the client's connection is reset."""

delay_ms_default = 100
drop_probability_default = 0.5
drop_hold_ms_default = 1_000
hold_ms_max = 600_000
"""Largest `ms` a fault accepts (10 minutes)."""

close_timeout_s = 2.0
"""How long the connections' handlers get to finish when the proxy stops."""

control_line_bytes_max = 8 * 1024
control_header_lines_max = 64
control_read_timeout_s = 5.0
control_timeout_s = 5.0
"""How long `ProxyControl` waits for the proxy to answer."""


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    DROP = "drop"


# Which parameters each mode takes; any other is refused rather than silently ignored.
MODE_PARAMETERS: dict[Mode, frozenset[str]] = {
    Mode.PASS: frozenset(),
    Mode.DELAY: frozenset({"ms"}),
    Mode.BLACKHOLE: frozenset(),
    Mode.RESET: frozenset(),
    Mode.DROP: frozenset({"ms", "probability"}),
}


def parse_mode(text: str | Mode) -> Mode:
    try:
        return Mode(text)
    except ValueError:
        raise ValueError(f"unknown mode {text!r}; modes: {', '.join(mode.value for mode in Mode)}") from None


@dataclass(frozen=True, slots=True)
class LinkFault:
    """The fault on the link now. Pure: decides when a chunk may go out, does no I/O."""

    mode: Mode = Mode.PASS
    ms: int = 0
    probability: float = 0.0

    @classmethod
    def parse(cls, mode: str, ms: str | None = None, probability: str | None = None) -> LinkFault:
        """The fault named by `mode` with its parameters (text, as in a query string); ValueError if bad."""
        kind = parse_mode(mode)
        given = {name for name, value in (("ms", ms), ("probability", probability)) if value is not None}
        extra = given - MODE_PARAMETERS[kind]
        if extra:
            takes = ", ".join(sorted(MODE_PARAMETERS[kind])) or "no parameters"
            raise ValueError(f"{kind.value} takes {takes}, not {', '.join(sorted(extra))}")
        if kind is Mode.DELAY:
            return cls(kind, ms=_parse_ms(ms, delay_ms_default))
        if kind is Mode.DROP:
            return cls(kind, ms=_parse_ms(ms, drop_hold_ms_default), probability=_parse_probability(probability))
        return cls(kind)

    def release_at_s(self, arrived_s: float, dropped: bool) -> float | None:
        """When a chunk that arrived at `arrived_s` may go out; None while this fault lasts."""
        if self.mode is Mode.PASS:
            return arrived_s
        if self.mode is Mode.DELAY:
            return arrived_s + self.ms / 1000
        if self.mode is Mode.DROP:
            return arrived_s + self.ms / 1000 if dropped else arrived_s
        return None  # blackhole holds everything; reset closes the connection that holds it


def _parse_ms(text: str | None, default: int) -> int:
    if text is None:
        return default
    ms = int(text)
    if not 0 <= ms <= hold_ms_max:
        raise ValueError(f"ms must be within 0..{hold_ms_max}, not {ms}")
    return ms


def _parse_probability(text: str | None) -> float:
    if text is None:
        return drop_probability_default
    probability = float(text)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be within 0..1, not {probability}")
    return probability


@dataclass(frozen=True, slots=True)
class ProxyState:
    """What `GET /mode` answers."""

    mode: str
    ms: int
    probability: float
    listen: str
    target: str
    seed: int
    connections: int
    connections_accepted: int
    connections_reset: int
    chunks_forwarded: int
    chunks_dropped: int


def split_address(address: str) -> tuple[str, int]:
    host, separator, port = address.rpartition(":")
    if not separator or not host:
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(slots=True)
class Chunk:
    data: bytes  # b"" is the end of that direction (the sender's FIN)
    arrived_s: float
    dropped: bool | None = None  # drawn the first time the chunk meets a `drop` fault


class Connection:
    """One client connection and, once dialed, its target connection."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = reader, writer
        self.target_writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()  # set by `reset`
        self.handler = asyncio.current_task()  # the task `asyncio.start_server` runs this connection in
        self.client_gone = asyncio.Event()  # the client sent FIN or failed before the target was dialed

    def reset(self) -> None:
        _reset(self.client_writer)
        if self.target_writer is not None:
            _reset(self.target_writer)
        self.closed.set()

    async def run(self) -> None:
        work = asyncio.create_task(self._work())
        closed = asyncio.create_task(self.closed.wait())
        await asyncio.wait({work, closed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (work, closed):
            task.cancel()
        results = await asyncio.gather(work, closed, return_exceptions=True)
        if self.closed.is_set():
            return  # already reset
        if isinstance(results[0], BaseException):
            # One side failed (reset by its peer, or the target refused): the other side sees an RST too.
            log.debug("connection failed: %r", results[0])
            self.reset()
            self.proxy.connections_reset += 1
            return
        self.client_writer.close()
        if self.target_writer is not None:
            self.target_writer.close()

    async def _work(self) -> None:
        upstream: asyncio.Queue[Chunk] = asyncio.Queue(chunks_queued_max)
        downstream: asyncio.Queue[Chunk] = asyncio.Queue(chunks_queued_max)
        pumps = [asyncio.create_task(self._read(self.client_reader, upstream, self.client_gone))]
        try:
            if not await self._dial_allowed():
                return
            host, port = split_address(self.proxy.target)
            target_reader, target_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=chunk_bytes_max), target_connect_timeout_s
            )
            self.target_writer = target_writer
            pumps.append(asyncio.create_task(self._write(upstream, target_writer)))
            pumps.append(asyncio.create_task(self._read(target_reader, downstream, None)))
            pumps.append(asyncio.create_task(self._write(downstream, self.client_writer)))
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raises the first failure
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)  # collects every failure, none left unseen

    async def _dial_allowed(self) -> bool:
        """Wait until the fault lets the dial through, as it would a chunk (a blackhole holds it, a
        delay delays it, a drop may lose it); False if the client gave up during a blackhole."""
        loop = asyncio.get_running_loop()
        dialing = asyncio.create_task(self.proxy.hold(Chunk(b"", loop.time())))
        gone = asyncio.create_task(self.client_gone.wait())
        try:
            await asyncio.wait({dialing, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not dialing.done() and self.proxy.fault.mode is Mode.BLACKHOLE:
                # Nothing ever reached the target, so there is nothing to deliver later. Closing it
                # keeps a reconnect storm during a long blackhole from piling up connections.
                return False
            await dialing  # a delay or a drop holds the dial for a bounded time
            return True
        finally:
            dialing.cancel()
            gone.cancel()

    async def _read(
        self, source: asyncio.StreamReader, queue: asyncio.Queue[Chunk], gone: asyncio.Event | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await source.read(chunk_bytes_max)
                await queue.put(Chunk(data, loop.time()))
                if not data:
                    return
        finally:
            if gone is not None:
                gone.set()

    async def _write(self, queue: asyncio.Queue[Chunk], sink: asyncio.StreamWriter) -> None:
        while True:
            chunk = await queue.get()
            await self.proxy.hold(chunk)
            if not chunk.data:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            sink.write(chunk.data)
            await sink.drain()
            self.proxy.chunks_forwarded += 1


class FaultProxy:
    """The proxy in one event loop: a listener, its connections, and the fault they all obey."""

    def __init__(self, listen: str, target: str, *, seed: int, fault: LinkFault | None = None) -> None:
        self.listen, self.target, self.seed = listen, target, seed
        self.fault = fault or LinkFault()
        self.random = random.Random(seed)
        self.connections: set[Connection] = set()
        self.connections_accepted = 0
        self.connections_reset = 0
        self.chunks_forwarded = 0
        self.chunks_dropped = 0
        self._changed = asyncio.Event()  # replaced on every change; the old one is set to wake waiters
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        host, port = split_address(self.listen)
        self._server = await asyncio.start_server(self._accept, host, port, limit=chunk_bytes_max)

    async def close(self) -> None:
        """Stop listening and reset every connection; return once their handlers have finished."""
        if self._server is not None:
            self._server.close()
        handlers = [connection.handler for connection in self.connections if connection.handler is not None]
        for connection in list(self.connections):
            connection.reset()
        if handlers:
            await asyncio.wait(handlers, timeout=close_timeout_s)
        if self._server is not None:
            await self._server.wait_closed()

    def set_fault(self, fault: LinkFault) -> None:
        log.info("mode %s ms=%d probability=%s", fault.mode.value, fault.ms, fault.probability)
        self.fault = fault
        if fault.mode is Mode.RESET:
            for connection in list(self.connections):
                connection.reset()
                self.connections_reset += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def state(self) -> ProxyState:
        return ProxyState(
            mode=self.fault.mode.value,
            ms=self.fault.ms,
            probability=self.fault.probability,
            listen=self.listen,
            target=self.target,
            seed=self.seed,
            connections=len(self.connections),
            connections_accepted=self.connections_accepted,
            connections_reset=self.connections_reset,
            chunks_forwarded=self.chunks_forwarded,
            chunks_dropped=self.chunks_dropped,
        )

    async def hold(self, chunk: Chunk) -> None:
        """Return when the current fault lets `chunk` go out; re-decided whenever the fault changes."""
        loop = asyncio.get_running_loop()
        while True:
            changed = self._changed  # taken before the fault is read, so no change can be missed
            fault = self.fault
            if fault.mode is Mode.DROP and chunk.dropped is None:
                chunk.dropped = self.random.random() < fault.probability
                self.chunks_dropped += chunk.dropped
            release_s = fault.release_at_s(chunk.arrived_s, bool(chunk.dropped))
            now_s = loop.time()
            if release_s is not None and release_s <= now_s:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), None if release_s is None else release_s - now_s)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self.fault.mode is Mode.RESET or len(self.connections) >= connections_max:
            _reset(writer)
            self.connections_reset += 1
            return
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)


class ControlServer:
    """The HTTP control port: /health, /mode, /mode?set=MODE&ms=N&probability=P."""

    def __init__(self, proxy: FaultProxy, address: str) -> None:
        self.proxy, self.address = proxy, address
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        host, port = split_address(self.address)
        self._server = await asyncio.start_server(self._handle, host, port, limit=control_line_bytes_max)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), control_read_timeout_s)
            for _ in range(control_header_lines_max):
                header = await asyncio.wait_for(reader.readline(), control_read_timeout_s)
                if header in (b"\r\n", b"\n", b""):
                    break
            status, body = self.answer(request_line.decode("latin-1"))
        except (ValueError, TimeoutError, ConnectionError) as error:
            status, body = 400, {"error": f"bad request: {error}"}
        payload = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + payload)
            await writer.drain()
        writer.close()

    def answer(self, request_line: str) -> tuple[int, dict[str, object]]:
        parts = request_line.split()
        if len(parts) != 3:
            return 400, {"error": f"bad request line {request_line.strip()!r}"}
        method, target, _ = parts
        if method != "GET":
            return 405, {"error": "only GET"}
        url = urllib.parse.urlsplit(target)
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/health":
            return 200, {"ok": True}
        if url.path != "/mode":
            return 404, {"error": f"no {url.path}; try /health, /mode, /mode?set=MODE"}
        if "set" in query:
            unknown = set(query) - {"set", "ms", "probability"}
            if unknown:
                return 400, {"error": f"unknown parameter(s) {', '.join(sorted(unknown))}"}
            try:
                fault = LinkFault.parse(query["set"], query.get("ms"), query.get("probability"))
            except ValueError as error:
                return 400, {"error": str(error)}
            self.proxy.set_fault(fault)
        return 200, asdict(self.proxy.state())


class ProxyControl:
    """Client of a proxy's control port, for tests and `ringcast chaos link`."""

    def __init__(self, address: str, timeout_s: float = control_timeout_s) -> None:
        self.address, self.timeout_s = address, timeout_s

    def get(self) -> ProxyState:
        return ProxyState(**self._request("/mode"))

    def set(self, mode: Mode | str, *, ms: int | None = None, probability: float | None = None) -> ProxyState:
        """Switch the link's fault now; parameters a mode does not take are refused (ValueError)."""
        query = {"set": parse_mode(mode).value}
        if ms is not None:
            query["ms"] = str(ms)
        if probability is not None:
            query["probability"] = repr(probability)
        return ProxyState(**self._request("/mode?" + urllib.parse.urlencode(query)))

    def healthy(self) -> bool:
        try:
            return self._request("/health").get("ok") is True
        except (OSError, ValueError):
            return False

    def _request(self, path: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=self.timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            raise ValueError(json.loads(error.read()).get("error", str(error))) from None


async def serve(arguments: argparse.Namespace) -> None:
    seed = arguments.seed if arguments.seed is not None else secrets.randbelow(2**31)
    fault = LinkFault.parse(arguments.mode, arguments.ms, arguments.probability)
    proxy = FaultProxy(arguments.listen, arguments.target, seed=seed, fault=fault)
    control = ControlServer(proxy, arguments.control)
    await proxy.start()
    await control.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    log.info(
        "proxy %s -> %s, control %s, mode %s, seed %d",
        arguments.listen,
        arguments.target,
        arguments.control,
        fault.mode.value,
        seed,
    )
    await stop.wait()
    await control.close()
    await proxy.close()
    log.info("stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ringcast_tools.chaos.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port clients dial")
    parser.add_argument("--target", required=True, help="host:port every connection is forwarded to")
    parser.add_argument("--control", required=True, help="host:port of the HTTP control port")
    parser.add_argument("--mode", default="pass", help="the fault at start (default: pass)")
    parser.add_argument("--ms", default=None, help="with --mode delay or drop")
    parser.add_argument("--probability", default=None, help="with --mode drop")
    parser.add_argument("--seed", type=int, default=None, help="seed of the drop draws (default: random)")
    return parser


def main() -> None:
    arguments = build_parser().parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s proxy {arguments.listen} %(message)s"
    )
    try:
        LinkFault.parse(arguments.mode, arguments.ms, arguments.probability)
    except ValueError as error:
        raise SystemExit(f"--mode: {error}") from None
    asyncio.run(serve(arguments))


if __name__ == "__main__":
    main()

"""`serve`'s API listener: the API Flask app under uvicorn, through a2wsgi,
in a gunicorn worker of its own class (SPEC §15, docs/listeners.md). Outside
cregistry.web because the gunicorn master imports it, and the master must not
import prometheus_client (server.metrics_directory).

The API listener faces the device network. Under gunicorn's gthread worker
a connection held a thread from its first byte to its last, and a request
body had no read timeout: 17 connections holding half-sent bodies (2
workers x 8 threads, plus one) stopped /healthz, the console and the admin
API. Here a connection costs the event loop a few kilobytes until its
request is whole:

- `TimedHttpToolsProtocol` closes a connection whose request (headers and
  body) has not arrived whole within READ_TIMEOUT_SECONDS of its first byte
  (or of the connection opening): slow headers and slow bodies alike.
- `ApiListener` reads the whole body on the loop before a thread sees the
  request, so a Flask thread only ever runs a request that has arrived.
- Device-facing registration runs on a thread pool of its own, so a flood
  of registrations (bcrypt for each) waits there and never takes the
  threads that answer operators, /healthz and the console.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
import uvloop
from a2wsgi import WSGIMiddleware
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# A device on a slow link sends a registration (under 1 KiB) in far less;
# a connection that takes longer is closed, whatever it has sent.
READ_TIMEOUT_SECONDS = 10.0
KEEPALIVE_SECONDS = 30
# The routes a device calls (SPEC §5, §13); every other route is an operator's or a probe's.
DEVICE_PATHS = frozenset({"/api/client-registry/register"})


class BodyTooLarge(Exception):
    pass


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a read timeout: uvicorn has a
    keep-alive timeout between requests but none while one arrives."""

    read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.read_timer is None:  # a keep-alive connection's next request
            self._arm_read_timer()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

    def _arm_read_timer(self) -> None:
        self.read_timer = self.loop.call_later(READ_TIMEOUT_SECONDS, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if not self.transport.is_closing():
            log.debug("closing a connection whose request did not arrive within %s s", READ_TIMEOUT_SECONDS)
            self.transport.close()


class ApiListener:
    """The ASGI app of the API listener: whole bodies first, then the Flask
    app on the device pool or the operator pool."""

    def __init__(self, app: Any, threads: int, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.operators = WSGIMiddleware(app, workers=threads)
        self.devices = WSGIMiddleware(app, workers=threads)
        # Named pools (a2wsgi names both "WSGI"): a thread dump says whose work is waiting.
        self.operators.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="api-operators")
        self.devices.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="api-devices")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            body = await self._whole_body(receive)
        except BodyTooLarge:
            await _answer(send, 413, b'{"ok": false, "error": "the body is too large"}')  # web/errors.py's shape
            return
        if body is None:  # the client went away, or the read timeout closed it
            return
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        pool = self.devices if scope["path"] in DEVICE_PATHS else self.operators
        await pool(scope, replay, send)  # type: ignore[arg-type]

    async def _whole_body(self, receive: Receive) -> bytes | None:
        """The body, or None when the client went away; reading stops past the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


class SecureScheme:
    """The secure-scheme headers (X-Forwarded-Proto: https and the like)
    believed from the proxies of FORWARDED_ALLOW_IPS, as gunicorn's own
    workers did; X-Forwarded-For is not (the per-address limits count the peer)."""

    def __init__(self, app: Any, trusted: list[str], headers: dict[str, str]) -> None:
        self.app = app
        self.trust_all = "*" in trusted
        self.trusted = frozenset(trusted)
        self.headers = {name.lower().encode("latin-1"): value.encode("latin-1") for name, value in headers.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and (self.trust_all or client[0] in self.trusted):
            for name, value in scope["headers"]:
                if self.headers.get(name) == value.lower():
                    scope["scheme"] = "https"
                    break
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiWorker(Worker):
    """A gunicorn worker serving its app (an ApiListener, from
    CregistryServer.load) with uvicorn on the sockets gunicorn opened; the
    master still starts, watches and replaces the workers as before."""

    def init_signals(self) -> None:
        # uvicorn installs its own SIGTERM/SIGINT handlers (graceful stop);
        # gunicorn's would swallow them.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        config = uvicorn.Config(
            SecureScheme(self.wsgi, self.cfg.forwarded_allow_ips, self.cfg.secure_scheme_headers),
            loop="none",  # run()'s uvloop
            http=TimedHttpToolsProtocol,
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level=self.cfg.loglevel.lower(),
            access_log=False,
            # The peer address is the client's: the per-address limits count it (as under gunicorn).
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=KEEPALIVE_SECONDS,
            timeout_notify=max(1, int(self.timeout)),
            callback_notify=self._notify,
        )
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, self.handle_exit, signal.SIGQUIT, None)
        await server.serve(sockets=[listener.sock for listener in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _notify(self) -> None:
        self.notify()

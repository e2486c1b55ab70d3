"""The broker listener: the one front of the check routes (broker_checks.py),
and everything else of the broker app (health, /metrics, /mqtt/changes,
other methods) through to Flask with a2wsgi.

On `serve` it is uvicorn (uvloop, httptools) on its own thread in each
gunicorn worker, on a socket the master opened before the fork (ListenerThread).
Wherever the broker app runs as WSGI (Flask's test client), a2wsgi carries
the same listener (as_wsgi), so both answer with the same code.

Mosquitto waits for every check on its only thread, so the check routes
must cost as little as possible. Measured on the 2-core machine of
bench/results.json, an empty app answers at a median of 0.52 ms under
gunicorn's gthread worker and 0.27 ms under uvicorn (docs/performance.md).
An answer without I/O (malformed fields, or the worker's caches: see
followed_cache.py) is computed on the event loop. Everything else is handed
to the listener's pool once and runs there start to finish (the token check,
then bcrypt or a registration), so a stalled Redis never stalls the loop.
The deadline (budget.py) is enforced here alone, counted from the request's
arrival: past it the answer is 503, and work that waited in the pool past it
is never started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import uvicorn
from a2wsgi import ASGIMiddleware, WSGIMiddleware

from cregistry.asgi import BodyTooLarge, Receive, Scope, Send, read_body
from cregistry.errors import InvalidInput
from cregistry.web.broker_checks import (
    ALLOW,
    METHODS,
    NOT_ALLOWED_BODY,
    POSITION_HEADER,
    ROUTES,
    Answer,
    BrokerChecks,
    parse_params,
)
from cregistry.web.deadline import DEADLINE_SECONDS, start_in_time, too_late
from cregistry.web.errors import error_answer

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


KEEPALIVE_SECONDS = 30  # the plugin and go-auth keep their connections
_POSITION = POSITION_HEADER.lower().encode("latin-1")
_HEADERS = [(b"content-type", b"application/json")]


class BrokerListener:
    """The ASGI app of the broker listener. `fallback`: the broker Flask app's
    own WSGI app, for every request that is not a check."""

    def __init__(
        self,
        checks: BrokerChecks,
        fallback: WsgiApp,
        *,
        fallback_workers: int,
        pool_workers: int,
        deadline_seconds: float = DEADLINE_SECONDS,
    ) -> None:
        self.checks = checks
        self.deadline_seconds = deadline_seconds
        self.fallback = WSGIMiddleware(fallback, workers=fallback_workers)  # type: ignore[arg-type]
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=pool_workers, thread_name_prefix="broker")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = ROUTES.get(scope["path"])
        if route is None:
            await self.fallback(scope, receive, send)  # type: ignore[arg-type]
            return
        if scope["method"] not in METHODS:
            data = NOT_ALLOWED_BODY
            headers = [*_HEADERS, (b"content-length", str(len(data)).encode()), (b"allow", ALLOW.encode())]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        started = time.perf_counter()
        arrived = time.monotonic()
        content_type, seen = "", None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == _POSITION:
                seen = value.decode("latin-1") or None
        try:
            body = await read_body(receive, self.checks.max_body_bytes)
            if body is None:
                raise InvalidInput("the request ended before its body")
            parsed = route.parse(parse_params(content_type, body, scope["query_string"]))
            answer = self.checks.quick(route, parsed, seen)
            if answer is None:
                answer = await self._off_loop(arrived, self.checks.answer, route, parsed, seen)
            status, reply = answer
        except BodyTooLarge:
            status, reply = 413, {"ok": False, "error": "the body is too large"}
        except Exception as error:  # noqa: BLE001 - every failure becomes one answer, never a grant
            status, reply = error_answer(error, unexpected_status=503)
        data = self.checks.finish(route, status, reply, started)
        headers = [*_HEADERS, (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _off_loop(self, arrived: float, work: Callable[..., Answer], *args: Any) -> Answer:
        """`work` on the pool, start to finish on one thread; 503 once the
        deadline from `arrived` has passed (start_in_time: work that waited
        past it is not started)."""
        deadline = arrived + self.deadline_seconds
        future = asyncio.get_running_loop().run_in_executor(self.pool, start_in_time, deadline, work, *args)
        try:
            return await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise too_late() from None


class ListenerAsWsgi:
    """The broker listener as a WSGI app, for wherever the broker app runs as
    WSGI (Flask's test client): a2wsgi drives it on one event loop per process."""

    def __init__(self, listener: BrokerListener) -> None:
        self.listener = listener

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Read to the end here: a2wsgi lets the ASGI side finish only once its body was taken.
        return list(ASGIMiddleware(self.listener, loop=_wsgi_loop())(environ, start_response))  # type: ignore[arg-type]


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _wsgi_loop() -> asyncio.AbstractEventLoop:
    """The process's loop for ListenerAsWsgi (a2wsgi would start a thread and a loop per app)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="broker-wsgi", daemon=True).start()
        return _loop


ELECTION_INTERVAL = 0.25  # seconds between two tries of a standing-by worker


class ListenerThread:
    """uvicorn serving `app` on `sock` from a daemon thread of this process,
    once it holds one of the `slots` lock files: only that many workers
    serve the broker listener at a time (each with its own caches; see
    CREGISTRY_BROKER_PROCESSES). The kernel drops a dead worker's lock, and a
    worker standing by takes its slot; until then new connections wait in
    the listening socket's queue."""

    def __init__(self, app: BrokerListener, sock: socket.socket, log_level: str, slots: list[Path]) -> None:
        config = uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level=log_level.lower(),
            access_log=False,
            proxy_headers=False,  # the peer address is the broker's own
            server_header=False,
            date_header=False,
            timeout_keep_alive=KEEPALIVE_SECONDS,
        )
        self.server = uvicorn.Server(config)
        self.sock = sock
        self.slots = slots
        self.held: int | None = None  # the file descriptor of the slot held, kept open while serving
        self.thread = threading.Thread(target=self._run, name="broker-listener", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def _take_slot(self) -> bool:
        """Wait for a free slot; False when told to stop first."""
        while not self.server.should_exit:
            for path in self.slots:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.held = fd
                return True
            time.sleep(ELECTION_INTERVAL)
        return False

    def _run(self) -> None:
        try:
            if not self._take_slot():
                return
            log.info("worker %d serves the broker listener", os.getpid())
            self.server.run(sockets=[self.sock])
        except BaseException:  # noqa: BLE001 - SystemExit from a failed start included
            log.exception("the broker listener failed")
        if not self.server.should_exit:
            # A worker without its broker listener must not go on: gunicorn starts a new one.
            log.error("the broker listener stopped; ending this worker")
            os.kill(os.getpid(), signal.SIGTERM)

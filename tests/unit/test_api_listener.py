"""The API listener's ASGI layer (api_listener.py): whole bodies before any
thread, device routes on their own pool, the secure scheme only from trusted proxies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from cregistry.api_listener import ApiListener, SecureScheme

Message = MutableMapping[str, Any]


def recording_wsgi_app(calls: list[dict[str, Any]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        calls.append({"body": body, "thread": threading.current_thread().name, "scheme": environ["wsgi.url_scheme"]})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def scope(path: str, client: str = "192.0.2.7", headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": (client, 40000),
        "server": ("127.0.0.1", 8080),
    }


def call(app: Any, request_scope: Message, messages: list[Message]) -> list[Message]:
    """Run one request through the ASGI app; what it sent back."""
    sent: list[Message] = []

    async def run() -> None:
        incoming = list(messages)

        async def receive() -> Message:
            if incoming:
                return incoming.pop(0)
            await asyncio.sleep(3600)  # a client that sends nothing more
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        await asyncio.wait_for(app(request_scope, receive, send), timeout=10)

    asyncio.run(run())
    return sent


def status_of(sent: list[Message]) -> int:
    return next(message["status"] for message in sent if message["type"] == "http.response.start")


def test_the_app_sees_the_whole_body_sent_in_pieces() -> None:
    calls: list[dict[str, Any]] = []
    listener = ApiListener(recording_wsgi_app(calls), threads=2, max_body_bytes=1024)
    pieces = [{"type": "http.request", "body": part, "more_body": True} for part in (b'{"user', b'name": ')]
    sent = call(listener, scope("/api/users"), [*pieces, {"type": "http.request", "body": b'"a"}', "more_body": False}])
    assert status_of(sent) == 200
    assert [c["body"] for c in calls] == [b'{"username": "a"}']


def test_a_client_gone_before_its_body_ends_reaches_no_thread() -> None:
    calls: list[dict[str, Any]] = []
    listener = ApiListener(recording_wsgi_app(calls), threads=2, max_body_bytes=1024)
    sent = call(
        listener,
        scope("/api/client-registry/register"),
        [{"type": "http.request", "body": b'{"user', "more_body": True}, {"type": "http.disconnect"}],
    )
    assert sent == [] and calls == []


def test_a_body_over_the_limit_is_413_without_the_app() -> None:
    calls: list[dict[str, Any]] = []
    listener = ApiListener(recording_wsgi_app(calls), threads=2, max_body_bytes=8)
    sent = call(listener, scope("/api/users"), [{"type": "http.request", "body": b"x" * 9, "more_body": True}])
    assert status_of(sent) == 413 and calls == []


def test_registration_runs_on_the_device_pool_and_the_rest_on_the_operator_pool() -> None:
    calls: list[dict[str, Any]] = []
    listener = ApiListener(recording_wsgi_app(calls), threads=2, max_body_bytes=1024)
    whole = [{"type": "http.request", "body": b"{}", "more_body": False}]
    for path in ("/api/client-registry/register", "/api/client-registry/unlock", "/healthz"):
        assert status_of(call(listener, scope(path), list(whole))) == 200
    assert [c["thread"].rsplit("_", 1)[0] for c in calls] == ["api-devices", "api-operators", "api-operators"]


def test_the_secure_scheme_is_believed_only_from_a_trusted_proxy() -> None:
    calls: list[dict[str, Any]] = []
    app = SecureScheme(
        ApiListener(recording_wsgi_app(calls), threads=1, max_body_bytes=1024),
        ["127.0.0.1"],
        {"X-FORWARDED-PROTO": "https"},
    )
    forwarded = [(b"x-forwarded-proto", b"https")]
    whole = [{"type": "http.request", "body": b"", "more_body": False}]
    call(app, scope("/console/sign-in", client="127.0.0.1", headers=forwarded), list(whole))
    call(app, scope("/console/sign-in", client="192.0.2.7", headers=forwarded), list(whole))
    call(app, scope("/console/sign-in", client="127.0.0.1"), list(whole))
    assert [c["scheme"] for c in calls] == ["https", "http", "http"]

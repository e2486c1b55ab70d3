"""GET /metrics on the broker listener: Prometheus text, added up over
gunicorn's worker processes.

`cregistry serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before
the workers fork (server.py); each worker then writes its counters to files
there and the worker that answers a scrape adds them all up. Without that
variable (tests, a single process) the metrics live in this process.

Requests are counted in one place, the apps' request hooks, by the route
they reached, so a new broker route is counted without touching its body.
What lives in Redis (pending requests, the unlock key) is read at scrape
time, so every worker reports the same value.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import redis
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from cregistry import instruments
from cregistry.lock import RegistryLock
from cregistry.requests import PendingRequests

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Broker routes Flask answers, by endpoint (the checks are counted in front of
# Flask, by broker_checks.BrokerChecks.finish); the feed is also recognised by its path.
CHECK_ROUTES = {"broker.changes": "feed"}
FEED_PATH = "/mqtt/changes"
# A cached check takes a fraction of a millisecond, bcrypt tens of them.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# The process's own registry, exposed when there is no multiprocess directory.
LOCAL = CollectorRegistry()

CHECKS = Counter(
    "cregistry_checks",
    "Broker route answers by route (user, acl, superuser, feed) and result (allow, deny, error).",
    ["route", "result"],
    registry=LOCAL,
)
CHECKS_WITHOUT_REDIS = Counter(
    "cregistry_checks_without_redis",
    "Broker checks a worker answered alone, by route: from its caches, for a caller whose feed position its"
    " change feed follower covers (the plugin sends it), or a refusal of malformed fields.",
    ["route"],
)
CHECK_SECONDS = Histogram(
    "cregistry_check_duration_seconds",
    "Time to answer a broker route, by route.",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=LOCAL,
)
PASSWORD_CHECKS = Counter(
    "cregistry_password_checks",
    "Password checks of known users by path (token: verified token, bcrypt, limited: refused by the"
    " guessing limit) and result (accepted, refused).",
    ["path", "result"],
    registry=LOCAL,
)
PASSWORD_CHECKS_WAITING = Gauge(
    "cregistry_password_checks_waiting",
    "Password checks waiting for a bcrypt slot (CREGISTRY_BCRYPT_CONCURRENCY per worker).",
    registry=LOCAL,
    multiprocess_mode="livesum",
)
ADMIN_REQUESTS = Counter(
    "cregistry_admin_requests",
    "Admin API answers by HTTP status.",
    ["status"],
    registry=LOCAL,
)
REGISTRATIONS = Counter(
    "cregistry_registrations",
    "Device registration (POST /api/client-registry/register) answers by HTTP status.",
    ["status"],
    registry=LOCAL,
)
CERTIFICATES = Counter(
    "cregistry_certificates",
    "Client certificates by action (issue: at approval, renew, revoke).",
    ["action"],
    registry=LOCAL,
)
CERTIFICATE_CHECKS = Counter(
    "cregistry_certificate_checks",
    "CONNECTs with a client certificate by result (accepted, refused).",
    ["result"],
    registry=LOCAL,
)
ENROLLMENT_REGISTRATIONS = Counter(
    "cregistry_enrollment_registrations",
    "Registrations with an enrollment token by enrollment (empty for a token that names none) and result"
    " (granted, repeated, conflict, limited, busy, ..., or why one was refused: unknown_token, expired, used_up,"
    " outside_pattern, removed_user).",
    ["enrollment", "result"],
    registry=LOCAL,
)
REDIS_ERRORS = Counter(
    "cregistry_redis_errors",
    "Requests (and scrapes) that failed on Redis, by error (a redis-py exception, or StorageUnavailable for a"
    " deadline missed).",
    ["error"],
    registry=LOCAL,
)

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_text() -> Response:
    scrape = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(scrape)
    else:
        scrape.register(_Forward(LOCAL))
    domain = current_app.extensions["cregistry"].domain
    scrape.register(RegistryCollector(domain.lock, domain.requests))
    return Response(generate_latest(scrape), mimetype=CONTENT_TYPE_LATEST)


class PrometheusListener(instruments.Listener):
    def password_checked(self, path: str, accepted: bool) -> None:
        PASSWORD_CHECKS.labels(path, "accepted" if accepted else "refused").inc()

    def bcrypt_waiting(self, delta: int) -> None:
        PASSWORD_CHECKS_WAITING.inc(delta)

    def certificate_changed(self, action: str) -> None:
        CERTIFICATES.labels(action).inc()

    def certificate_checked(self, accepted: bool) -> None:
        CERTIFICATE_CHECKS.labels("accepted" if accepted else "refused").inc()

    def enrollment_registration(self, enrollment: str, result: str) -> None:
        ENROLLMENT_REGISTRATIONS.labels(enrollment, result).inc()


def init_app(app: Flask, *, broker: bool) -> None:
    """Count the app's requests; the broker app also serves /metrics."""
    instruments.install(PrometheusListener())
    if broker:
        app.register_blueprint(bp)
        app.before_request(_start_timer)
        app.after_request(_count_check)
    else:
        app.after_request(_count_api_request)


def count_redis_error(error: Exception) -> None:
    REDIS_ERRORS.labels(type(error).__name__).inc()


def check_route() -> str | None:
    """The broker route label of this request, or None for other routes."""
    route = CHECK_ROUTES.get(request.endpoint or "")
    if route is None and request.path == FEED_PATH:
        route = "feed"
    return route


def check_result(status: int) -> str:
    if status >= 500:
        return "error"
    return "allow" if status < 300 else "deny"


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count_check(response: Response) -> Response:
    route = check_route()
    started = g.get("metrics_started")
    if route is not None and started is not None:
        CHECK_SECONDS.labels(route).observe(time.perf_counter() - started)
        CHECKS.labels(route, check_result(response.status_code)).inc()
    return response


def _count_api_request(response: Response) -> Response:
    if request.blueprint == "admin":
        ADMIN_REQUESTS.labels(str(response.status_code)).inc()
    elif request.endpoint == "registration.register":
        REGISTRATIONS.labels(str(response.status_code)).inc()
    return response


class _Forward:
    """Expose another registry's metrics in a scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


class RegistryCollector:
    """Pending requests and the unlock state, read from Redis at scrape time."""

    def __init__(self, lock: RegistryLock, requests: PendingRequests) -> None:
        self.lock = lock
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        try:
            state = self.lock.status()
            pending = self.requests.count_requests()
        except redis.RedisError as error:
            count_redis_error(error)
            yield GaugeMetricFamily("cregistry_redis_up", "1 if Redis answered this scrape, else 0.", value=0)
            return
        yield GaugeMetricFamily("cregistry_redis_up", "1 if Redis answered this scrape, else 0.", value=1)
        yield GaugeMetricFamily("cregistry_pending_requests", "Pending registration requests.", value=pending)
        unlocked = state.seconds_left > 0
        yield GaugeMetricFamily(
            "cregistry_registry_unlocked", "1 while the registry records new requests, else 0.", value=int(unlocked)
        )
        yield GaugeMetricFamily(
            "cregistry_registry_unlock_seconds_left",
            "Seconds until the registry locks again (0 while locked).",
            value=state.seconds_left,
        )

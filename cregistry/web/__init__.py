"""The Flask apps: one per listener, so neither serves the other's routes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from cregistry import services
from cregistry.authorizer import Authorizer
from cregistry.config import ADMIN_TOKEN, REDIS_URL, Config, env_name
from cregistry.connections import connect
from cregistry.errors import ConfigError
from cregistry.feed_follower import FeedFollower
from cregistry.verification import WorkLimits
from cregistry.web import api_routes, broker_routes, console, errors, health, metrics, openapi
from cregistry.web.broker_asgi import BrokerListener, ListenerAsWsgi
from cregistry.web.broker_checks import BrokerChecks

API = "api"
BROKER = "broker"
MAX_BODY_BYTES = 256 * 1024  # a 64 KiB topic plus the rest; anything bigger is refused


@dataclasses.dataclass
class AppState:
    """What the routes reach through current_app.extensions["cregistry"]."""

    config: Config
    domain: services.Services
    authorizer: Authorizer
    # Broker checks run here, so a route can give up on one at its deadline.
    checks: concurrent.futures.ThreadPoolExecutor


def create_app(
    config: Config | None = None,
    *,
    listener: str,
    connection: redis.Redis | None = None,
    limits: WorkLimits | None = None,
    clock: Callable[[], float] = time.time,
    follow_changes: bool = False,
) -> Flask:
    """The app for one listener: "api" (registration + admin) or "broker" (go-auth),
    on a domain of its own. `follow_changes`: the broker checks' caches may answer
    without Redis (feed_follower.py); the caller starts the follower."""
    config = config if config is not None else Config.from_env()
    domain = services.build(
        _connection(config, connection), config, clock=clock, limits=limits, follow_changes=follow_changes
    )
    if listener == BROKER:
        return broker_app(config, domain)[0]
    if listener == API:
        return api_app(config, domain)
    raise ValueError(f"unknown listener {listener!r}")


def api_app(config: Config, domain: services.Services) -> Flask:
    """Registration, the admin API, the OpenAPI document and the console."""
    if not config.named_admin_tokens():
        raise ConfigError(f"the API listener needs {env_name(ADMIN_TOKEN)}")
    app = _app_on(config, domain, API)
    app.register_blueprint(api_routes.registration)
    app.register_blueprint(api_routes.admin)
    app.register_blueprint(openapi.bp)
    metrics.init_app(app, broker=False)
    console.init_app(app, config)
    errors.init_app(app, unexpected_status=500)
    return app


def broker_app(config: Config, domain: services.Services) -> tuple[Flask, BrokerListener]:
    """go-auth's routes and the feed, and the broker listener in front of them:
    the check routes skip Flask (broker_checks.py, broker_asgi.py), everything
    else is the Flask app's. As WSGI, the app is that listener too (a2wsgi)."""
    app = _app_on(config, domain, BROKER)
    app.register_blueprint(broker_routes.bp)
    listener = BrokerListener(
        BrokerChecks(domain.authorizer, max_body_bytes=MAX_BODY_BYTES),
        app.wsgi_app,
        fallback_workers=2,
        pool_workers=config.threads,
    )
    app.wsgi_app = ListenerAsWsgi(listener)  # type: ignore[method-assign]
    metrics.init_app(app, broker=True)
    errors.init_app(app, unexpected_status=503)
    return app, listener


def _app_on(config: Config, domain: services.Services, listener: str) -> Flask:
    app = Flask(f"cregistry.{listener}")
    app.json = MarkupSafeJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    checks = concurrent.futures.ThreadPoolExecutor(max_workers=4 * config.threads, thread_name_prefix="check")
    app.extensions["cregistry"] = AppState(config, domain, domain.authorizer, checks)
    app.register_blueprint(health.bp)
    return app


def _connection(config: Config, connection: redis.Redis | None) -> redis.Redis:
    if connection is not None:
        return connection
    if config.redis_url is None:
        raise ConfigError(f"no Redis: set {env_name(REDIS_URL)}")
    return connect(config.redis_url, config.redis_timeout, min_replicas=config.redis_min_replicas)


class MarkupSafeJSONProvider(DefaultJSONProvider):
    """JSON with <, > and & escaped (as Go's encoding/json does): client ids
    and contexts come from devices, and an admin page that shows them must
    not be able to mistake them for markup."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclasses.dataclass(frozen=True)
class WorkerApps:
    """What one `serve` worker runs: the API app (under gunicorn) and the
    broker listener (broker_asgi.py) with its Flask app."""

    api: Flask
    broker: Flask
    broker_listener: BrokerListener
    follower: FeedFollower


def create_worker_apps(config: Config, connection: redis.Redis | None = None) -> WorkerApps:
    """One domain per worker process: one set of bcrypt slots, one feed follower,
    one set of caches, shared by the API app and the broker listener."""
    domain = services.build(_connection(config, connection), config, limits=WorkLimits(config), follow_changes=True)
    assert domain.follower is not None  # follow_changes=True builds it
    api = api_app(config, domain)
    broker, listener = broker_app(config, domain)
    return WorkerApps(api, broker, listener, domain.follower)

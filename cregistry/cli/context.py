"""What every `cregistry` command shares: the click context's object, which
reads the configuration and builds the domain on first use."""

from __future__ import annotations

import functools
import getpass
import os
from collections.abc import Callable

import click
import redis

from cregistry import embedded, services
from cregistry.budget import SERVICE_DEADLINE_SECONDS
from cregistry.config import REDIS_URL, Config, env_name
from cregistry.connections import connect
from cregistry.roles import RoleStore
from cregistry.users import UserStore

# Per Redis operation: the service's deadline (budget.py), so a command
# against a stalled Redis fails within 2 s as the service's answers do.
CLI_REDIS_TIMEOUT = SERVICE_DEADLINE_SECONDS


# How a command reaches Redis: connections.connect, or what the caller hands
# in as the click context's obj (the tests: CliRunner.invoke(..., obj=...)).
Connector = Callable[..., redis.Redis]


class CliContext:
    def __init__(self, json_output: bool, connector: Connector = connect) -> None:
        self.json_output = json_output
        self.connector = connector
        self._services: services.Services | None = None

    @functools.cached_property
    def config(self) -> Config:
        return Config.from_env()

    @property
    def domain(self) -> services.Services:
        """Built on first use, so `--help` and device commands need no Redis."""
        if self._services is None:
            url = self.config.redis_url or embedded.url_for(self.config.embedded_redis_port)
            connection = self.connector(url, CLI_REDIS_TIMEOUT, min_replicas=self.config.redis_min_replicas)
            self._services = services.build(connection, self.config)
        return self._services

    @functools.cached_property
    def actor(self) -> str:
        """Who the audit trail names for this command."""
        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary uid in a container
            return f"cli:uid-{os.getuid()}"

    @property
    def users(self) -> UserStore:
        return self.domain.users

    @property
    def roles(self) -> RoleStore:
        return self.domain.roles

    def redis_hint(self) -> str:
        if self.config.redis_url:
            return f" at {env_name(REDIS_URL)}"
        return (
            f": {env_name(REDIS_URL)} is not set and no embedded Redis of `cregistry serve`"
            f" answers at {embedded.url_for(self.config.embedded_redis_port)}"
        )


pass_cli = click.make_pass_decorator(CliContext)

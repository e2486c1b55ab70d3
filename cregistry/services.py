"""The composition root: builds the domain objects of one process once, each
handed its collaborators. The web apps, the CLI and the test fixtures call
build(); nothing else constructs a Registry out of its parts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import redis

from cregistry.audit import AuditLog
from cregistry.authorizer import Authorizer
from cregistry.changes import ChangeFeed
from cregistry.config import Config
from cregistry.feed_follower import FeedFollower
from cregistry.keys import Keys
from cregistry.registry import Registry
from cregistry.users import UserStore
from cregistry.verification import PasswordVerifier, WorkLimits


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    redis: redis.Redis
    keys: Keys
    changes: ChangeFeed
    audit: AuditLog
    users: UserStore
    verifier: PasswordVerifier
    registry: Registry
    authorizer: Authorizer
    # Built only where caches may answer without Redis (the service's broker listener); started after the fork.
    follower: FeedFollower | None = None


def build(
    connection: redis.Redis,
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    limits: WorkLimits | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    follow_changes: bool = False,
) -> Services:
    """Every object once; `limits` (the bcrypt slots) may be shared by several
    builds of one process, as the two listeners of `serve` share them.
    `follow_changes`: build a feed follower (feed_follower.py) for the
    caches of the broker checks."""
    keys = Keys(config.key_prefix)
    changes = ChangeFeed(connection, config, keys=keys)
    audit = AuditLog(connection, config, clock, keys=keys, changes=changes)
    users = UserStore(connection, config, clock, keys=keys, audit=audit)
    limits = limits if limits is not None else WorkLimits(config)
    follower = FeedFollower(changes, monotonic=monotonic) if follow_changes else None
    verifier = PasswordVerifier(
        connection, config, clock, limits, keys=keys, audit=audit, follower=follower, monotonic=monotonic
    )
    registry = Registry(connection, config, clock, limits, keys=keys, users=users, verifier=verifier, audit=audit)
    authorizer = Authorizer(connection, config, clock, limits, monotonic, registry=registry, follower=follower)
    return Services(config, connection, keys, changes, audit, users, verifier, registry, authorizer, follower)

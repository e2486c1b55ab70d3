"""The composition root: builds the domain objects of one process once, each
handed its collaborators. The web apps, the CLI and the test fixtures call
build(); nothing else constructs the domain objects."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import redis

from cregistry.address_limit import AddressLimit
from cregistry.audit import AuditLog
from cregistry.authorizer import Authorizer
from cregistry.certificates import Authority, Certificates, load_authority
from cregistry.changes import ChangeFeed
from cregistry.config import Config
from cregistry.enrollments import Enrollments
from cregistry.feed_follower import FeedFollower
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import PasswordPolicy
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.roles import RoleStore
from cregistry.users import UserStore
from cregistry.verification import PasswordVerifier, WorkLimits


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    redis: redis.Redis
    clock: Callable[[], float]
    keys: Keys
    changes: ChangeFeed
    audit: AuditLog
    roles: RoleStore
    users: UserStore
    verifier: PasswordVerifier
    lock: RegistryLock
    requests: PendingRequests
    registration: Registration
    authorizer: Authorizer
    certificates: Certificates
    enrollments: Enrollments
    # Wrong admin tokens per client address, console sign-ins and admin API requests together.
    admin_token_limit: AddressLimit
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
    authority: Authority | None = None,
) -> Services:
    """Every object once; `limits` (the bcrypt slots) may be shared by several
    builds of one process, as the two listeners of `serve` share them.
    `follow_changes`: build a feed follower (feed_follower.py) for the
    caches of the broker checks. `authority`: the registry CA, loaded from
    the config (CREGISTRY_CA_CERT, CREGISTRY_CA_KEY) when not given."""
    keys = Keys(config.key_prefix)
    changes = ChangeFeed(connection, config, keys=keys)
    audit = AuditLog(connection, config, clock, keys=keys, changes=changes)
    roles = RoleStore(connection, keys=keys, audit=audit)
    # One password policy (CREGISTRY_PASSWORD_*) for the operator's passwords and the devices' own.
    policy = PasswordPolicy(config.password_min_length, config.password_require)
    users = UserStore(connection, config, clock, keys=keys, audit=audit, roles=roles, policy=policy)
    limits = limits if limits is not None else WorkLimits(config)
    certificates = Certificates(
        connection,
        config,
        clock,
        keys=keys,
        audit=audit,
        authority=authority if authority is not None else load_authority(config),
    )
    follower = FeedFollower(changes, monotonic=monotonic) if follow_changes else None
    verifier = PasswordVerifier(
        connection, config, clock, limits=limits, keys=keys, audit=audit, follower=follower, monotonic=monotonic
    )
    lock = RegistryLock(connection, config, clock, keys=keys, audit=audit)
    requests = PendingRequests(
        connection, config, clock, keys=keys, users=users, audit=audit, certificates=certificates
    )
    registration = Registration(
        connection,
        config,
        clock,
        keys=keys,
        verifier=verifier,
        policy=policy,
        requests=requests,
        certificates=certificates,
    )
    authorizer = Authorizer(
        users, verifier, registration, clock, monotonic, follower=follower, certificates=certificates
    )
    # Token digests under the verifier's secret (CREGISTRY_VERIFY_SECRET), so
    # that instances and the CLI sharing that secret find the same enrollments.
    enrollments = Enrollments(
        connection, config, clock, keys=keys, users=users, verifier=verifier, audit=audit,
        secret=verifier.secret,
        limit=AddressLimit(connection, key=keys.enrollment_failures, limit=config.enrollment_failure_limit,
                           window=config.enrollment_failure_window),
    )  # fmt: skip
    admin_token_limit = AddressLimit(
        connection, key=keys.admin_token_failures, limit=config.console_signin_limit,
        window=config.console_signin_window,
    )  # fmt: skip
    return Services(
        config,
        connection,
        clock,
        keys,
        changes,
        audit,
        roles,
        users,
        verifier,
        lock,
        requests,
        registration,
        authorizer,
        certificates,
        enrollments,
        admin_token_limit,
        follower,
    )

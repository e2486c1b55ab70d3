"""The whole Redis key schema. Nothing else in cregistry formats a key.

Every key starts with the configurable prefix. The keys of one user share the
hash tag ``{username}`` (and those of one role ``{role:name}``). That does not
make Redis Cluster work: an approval also writes the registry-wide indexes and
the audit stream in the same MULTI (see the README). Usernames and role names
cannot contain braces or colons (see names.py), so tags cannot collide or
nest.
"""

from __future__ import annotations

import hashlib


class Keys:
    def __init__(self, prefix: str = "cregistry") -> None:
        self.prefix = prefix

    # -- registry-wide ---------------------------------------------------
    def unlock(self) -> str:
        """String with a TTL: the registry is unlocked while it exists."""
        return f"{self.prefix}:unlock"

    def users(self) -> str:
        """Set of all usernames."""
        return f"{self.prefix}:users"

    def roles(self) -> str:
        """Set of all role names."""
        return f"{self.prefix}:roles"

    def audit(self) -> str:
        """Stream of operator actions, capped at CREGISTRY_AUDIT_MAX entries."""
        return f"{self.prefix}:audit"

    def changes(self) -> str:
        """Stream of what brokers must forget (changes.py), capped at CREGISTRY_CHANGES_MAX entries."""
        return f"{self.prefix}:changes"

    def pending_index(self) -> str:
        """Sorted set "username:candidate" -> expiry time; bounds the pending total."""
        return f"{self.prefix}:pending"

    def client_owners(self) -> str:
        """Hash: client ID -> the username that owns it (users.py; SPEC §4). A
        hash, not a key per client ID: client IDs may hold any character."""
        return f"{self.prefix}:client-owners"

    def admin_token_failures(self, address: str) -> str:
        """Counter with a TTL: wrong admin tokens from one client address (console sign-ins and admin API)."""
        return f"{self.prefix}:admin-token-failures:{address}"

    def enrollments(self) -> str:
        """Set of all enrollment names (enrollments.py; pruned of expired ones lazily)."""
        return f"{self.prefix}:enrollments"

    def enrollment_failures(self, address: str) -> str:
        """Counter with a TTL: refused enrollment registrations from one client address."""
        return f"{self.prefix}:enrollment-failures:{address}"

    # -- one enrollment (each key expires with the enrollment) --------------
    def enrollment(self, name: str) -> str:
        """Hash: usernamePattern, roles, maxUses, usesLeft, expiresAt, createdBy, createdAt, tokenDigest."""
        return f"{self.prefix}:{{enrollment:{name}}}:enrollment"

    def enrollment_token(self, digest: str) -> str:
        """String: the name of the enrollment whose token has this keyed digest."""
        return f"{self.prefix}:enrollment-token:{digest}"

    def enrollment_removed(self, name: str) -> str:
        """Hash: username -> time an operator deleted that user, which the enrollment had created."""
        return f"{self.prefix}:{{enrollment:{name}}}:removed"

    # -- one user ----------------------------------------------------------
    def user(self, username: str) -> str:
        """Hash: passwordHash, createdAt, superuser, clientId (the one it registered
        with), ownsClientIds (users.py), source; the current certificate's
        certSerial, certNotAfter, certFingerprint, certKey, certPem."""
        """Hash: passwordHash, createdAt, superuser, clientId, source (and enrollment, for enrolled users)."""
        return f"{self.prefix}:{{{username}}}:user"

    def user_client_ids(self, username: str) -> str:
        """Set of the user's own client IDs (each also in client_owners)."""
        return f"{self.prefix}:{{{username}}}:client-ids"

    def user_permissions(self, username: str) -> str:
        """Hash: topic pattern -> access, the user's direct permissions."""
        return f"{self.prefix}:{{{username}}}:permissions"

    def user_roles(self, username: str) -> str:
        """Set of role names given to the user."""
        return f"{self.prefix}:{{{username}}}:roles"

    def user_requests(self, username: str) -> str:
        """Set of the candidate names of the user's pending requests (pruned lazily):
        the pairing ID, or "pairingId-N" for a later candidate sharing it (pending.py)."""
        return f"{self.prefix}:{{{username}}}:requests"

    def request(self, username: str, candidate: str) -> str:
        """Hash with a TTL: one pending request (hash, credentials digest, client id, times, attempts)."""
        return f"{self.prefix}:{{{username}}}:request:{candidate}"

    def request_csr(self, username: str, candidate: str) -> str:
        """Hash with the request's TTL: a pending request's CSR (pem, keyType, publicKeySha256; certificates.py)."""
        return f"{self.prefix}:{{{username}}}:request-csr:{candidate}"

    def user_denials(self, username: str) -> str:
        """Hash: keyed credentials digest -> denial time; expires with the pending TTL."""
        return f"{self.prefix}:{{{username}}}:denied"

    def user_refused(self, username: str) -> str:
        """Counter with the pending TTL: attempts refused over the per-username cap."""
        return f"{self.prefix}:{{{username}}}:refused"

    def user_verified(self, username: str) -> str:
        """String with a TTL: HMAC token of the last verified password (verification.py)."""
        return f"{self.prefix}:{{{username}}}:verified"

    def user_last_connect(self, username: str) -> str:
        """Hash: time, clientId of the user's last successful CONNECT (written at most once a minute)."""
        return f"{self.prefix}:{{{username}}}:connect"

    def user_failures(self, username: str) -> str:
        """Counter with a TTL: failed password checks in the current window."""
        return f"{self.prefix}:{{{username}}}:failures"

    def user_client_failures(self, username: str) -> str:
        """Hash with a TTL: client ID -> failed password checks with it in the current window."""
        return f"{self.prefix}:{{{username}}}:client-failures"

    def user_known_clients(self, username: str) -> str:
        """Set with the verified TTL: client IDs that passed a password check (verification.py)."""
        return f"{self.prefix}:{{{username}}}:known-clients"

    def user_limited_try(self, username: str, client_id: str) -> str:
        """String with a short TTL: the last occasional try over the guessing limit with this
        client ID (named by its SHA-256: a client ID may hold any character)."""
        digest = hashlib.sha256(client_id.encode()).hexdigest()[:32]
        return f"{self.prefix}:{{{username}}}:limited-try:{digest}"

    # -- one role ----------------------------------------------------------
    def role_permissions(self, role: str) -> str:
        """Hash: topic pattern -> access."""
        return f"{self.prefix}:{{role:{role}}}:permissions"

    def role_permissions_affixes(self) -> tuple[str, str]:
        """(before, after) such that before + role + after == role_permissions(role),
        for a server-side script that reads the roles it finds."""
        return f"{self.prefix}:{{role:", "}:permissions"

    def role_members(self, role: str) -> str:
        """Set of usernames holding the role (so deleting a role cleans up)."""
        return f"{self.prefix}:{{role:{role}}}:members"

    @staticmethod
    def pending_member(username: str, candidate: str) -> str:
        """Member of the pending index (not a key); also the admin API's request id."""
        return f"{username}:{candidate}"

    @staticmethod
    def split_pending_member(member: str) -> tuple[str, str]:
        """(username, candidate) of a pending_member; usernames hold no colon."""
        username, _, candidate = member.partition(":")
        return username, candidate

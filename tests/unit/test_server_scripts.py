"""The server-side scripts (an ACL snapshot, a last-connect write, a pending
request's attempt) give the same answers after Redis has lost them: a restart
or SCRIPT FLUSH empties Redis's script cache, and the next call sends the
whole script instead of its digest."""

from __future__ import annotations

import fakeredis

from cregistry import services
from cregistry.permissions import Permission

PASSWORD = "correct-horse-battery"
INTERVAL = 60.0  # seconds within which the same client ID is not written again


def test_an_acl_snapshot_survives_a_script_flush(domain: services.Services, connection: fakeredis.FakeRedis) -> None:
    domain.users.add("sensor-1", PASSWORD)
    domain.users.grant("sensor-1", "a/#", "read")
    position, data = domain.users.acl_snapshot("sensor-1", "")
    assert data is not None and data.permissions == (Permission("a/#", "read"),)
    connection.script_flush()
    assert domain.users.acl_snapshot("sensor-1", "") == (position, data)
    connection.script_flush()
    assert domain.users.acl_snapshot("sensor-1", position) == (position, None)


def test_a_last_connect_write_survives_a_script_flush(
    domain: services.Services, connection: fakeredis.FakeRedis
) -> None:
    domain.users.add("sensor-1", PASSWORD)
    assert domain.users.record_connect("sensor-1", "client-a", 100.0, INTERVAL)
    connection.script_flush()
    assert not domain.users.record_connect("sensor-1", "client-a", 101.0, INTERVAL)
    connection.script_flush()
    assert domain.users.record_connect("sensor-1", "client-b", 102.0, INTERVAL)
    assert domain.users.get("sensor-1").last_client_id == "client-b"


def test_a_pending_requests_attempt_is_counted_after_a_script_flush(
    domain: services.Services, connection: fakeredis.FakeRedis
) -> None:
    domain.lock.unlock()
    for expected_attempts in (1, 2, 3):
        domain.registration.attempt("sensor-9", PASSWORD, "client-9", "rest")
        assert [request.attempts for request in domain.requests.list_requests()] == [expected_attempts]
        connection.script_flush()

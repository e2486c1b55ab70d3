"""The time budget of one broker check, stated once (SPEC §3, §11).

A broker refuses a CONNECT it cannot check within 2 s. The plugin gives the
whole HTTP check PLUGIN_TIMEOUT_SECONDS (its `plugin_opt_timeout_ms` default,
mosquitto/plugin/options.c; a unit test holds the two equal); the service
answers 503 at SERVICE_DEADLINE_SECONDS, ANSWER_MARGIN_SECONDS earlier, so
that a slow check reaches the plugin as cregistry's own "unavailable" (an
answer: no fault backoff, the reason logged) instead of as a timeout.
On Mosquitto 2.1 a CONNECT check is delayed (the broker serves others while it
runs) and bounded by the same timeout, so it too is answered or closed within
CHECK_BOUND_SECONDS (docs/plugin.md, "Delayed basic auth").
"""

from __future__ import annotations

CHECK_BOUND_SECONDS = 2.0  # SPEC: a check is answered, or the CONNECT refused, within 2 s
PLUGIN_TIMEOUT_SECONDS = 1.75
ANSWER_MARGIN_SECONDS = 0.25  # the 503's way back: a loaded loop, the socket, curl
SERVICE_DEADLINE_SECONDS = PLUGIN_TIMEOUT_SECONDS - ANSWER_MARGIN_SECONDS

assert SERVICE_DEADLINE_SECONDS + ANSWER_MARGIN_SECONDS <= PLUGIN_TIMEOUT_SECONDS < CHECK_BOUND_SECONDS

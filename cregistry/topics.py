"""MQTT topic names, filters and permission patterns (MQTT 3.1.1 §4.7).

A permission pattern is a topic filter that may also hold the placeholders
``%u`` (username) and ``%c`` (client id). Matching rules:

- a topic name (what is published or delivered) never holds ``+`` or ``#``;
- a pattern whose first level is a wildcard does not match topics starting
  with ``$``;
- ``#`` also matches the parent level (``a/#`` matches ``a``);
- a subscription filter is allowed only if every topic it can match is
  covered by the readable patterns taken together (``filter_is_covered``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cregistry.errors import InvalidInput

MAX_TOPIC_BYTES = 65535
PLACEHOLDERS = ("%u", "%c")

Levels = list[str]


def validate_topic_name(topic: object) -> Levels:
    """A topic as published or delivered: no wildcards."""
    levels = _levels(topic, "topic")
    if any("+" in level or "#" in level for level in levels):
        raise InvalidInput("a topic name must not contain '+' or '#'")
    return levels


def validate_filter(topic_filter: object) -> Levels:
    """A subscription filter: '+' fills a level, '#' only as the last level."""
    levels = _levels(topic_filter, "topic filter")
    _check_wildcards(levels)
    return levels


def validate_pattern(pattern: object) -> str:
    """A permission pattern: a filter that may hold %u and %c."""
    levels = _levels(pattern, "topic pattern")
    _check_wildcards(levels)
    text = str(pattern)
    rest = text
    for placeholder in PLACEHOLDERS:
        rest = rest.replace(placeholder, "")
    if "%" in rest:
        raise InvalidInput("a topic pattern may only use the placeholders %u and %c")
    return text


def expand_pattern(pattern: str, username: str, client_id: str) -> Levels | None:
    """Substitute the placeholders; None when the result would widen access.

    Usernames cannot hold '/', '+', '#' or start with '$', but MQTT client ids
    can: a client id of "a/#" must not turn "clients/%c" into a wildcard, so
    such a pattern simply does not apply to that client.
    """
    if "%c" in pattern and (client_id == "" or client_id.startswith("$") or any(c in client_id for c in "/+#\x00")):
        # A client id of "$SYS" must not turn "%c/#" into "$SYS/#" either.
        return None
    return substitute_placeholders(pattern, username, client_id).split("/")


def substitute_placeholders(text: str, username: str, client_id: str) -> str:
    """`text` with %u replaced by the username and %c by the client id."""
    return text.replace("%u", username).replace("%c", client_id)


def topic_matches(pattern: Sequence[str], topic: Sequence[str]) -> bool:
    """Does the pattern (a filter) match the topic name?"""
    for index, level in enumerate(pattern):
        if level == "#":
            return not (index == 0 and topic[0].startswith("$"))
        if index >= len(topic):
            return False
        if level == "+":
            if index == 0 and topic[0].startswith("$"):
                return False
            continue
        if level != topic[index]:
            return False
    return len(pattern) == len(topic)


def filter_is_covered(topic_filter: Sequence[str], patterns: Iterable[Sequence[str]]) -> bool:
    """Is every topic the filter can match matched by at least one pattern?

    Exact for unions: {"a", "a/+/#"} covers "a/#" although neither alone does.
    """
    candidates = [list(p) for p in patterns]
    if topic_filter and topic_filter[0].startswith("$"):
        # Patterns opening with a wildcard never reach $-topics.
        candidates = [p for p in candidates if p[0] not in ("+", "#")]
    return _covers(list(topic_filter), candidates, consumed=())


def _covers(rest: Levels, patterns: list[Levels], consumed: tuple[str, ...]) -> bool:
    """`consumed`: the filter levels matched so far (only the first two matter)."""
    if not patterns:
        return False
    if any(p and p[0] == "#" for p in patterns):
        return True
    if not rest:
        return any(not p for p in patterns)
    head = rest[0]
    if head == "#":
        # "#" stands for the parent level itself (unless that would be the
        # empty topic) and for one or more further levels.
        # The parent is the empty topic, which does not exist, only when the
        # levels consumed so far are none or a single empty one.
        parent_exists = consumed not in ((), ("",))
        if parent_exists and not any(not p for p in patterns):
            return False
        return _covers(["+", "#"], patterns, consumed)
    if head == "+":
        # A level value that no pattern names literally is only matched by
        # "+" patterns; those values always exist, so only "+" patterns count.
        allowed: tuple[str, ...] = ("+",)
    else:
        allowed = (head, "+")
    narrowed = [p[1:] for p in patterns if p and p[0] in allowed]
    return _covers(rest[1:], narrowed, (*consumed, head)[:2])


def _levels(topic: object, what: str) -> Levels:
    if not isinstance(topic, str):
        raise InvalidInput(f"{what} must be a string")
    if topic == "":
        raise InvalidInput(f"{what} must not be empty")
    if "\x00" in topic:
        raise InvalidInput(f"{what} must not contain NUL")
    try:
        size = len(topic.encode())
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode") from None
    if size > MAX_TOPIC_BYTES:
        raise InvalidInput(f"{what} must be at most {MAX_TOPIC_BYTES} bytes")
    return topic.split("/")


def _check_wildcards(levels: Levels) -> None:
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise InvalidInput("'#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise InvalidInput("'+' must be a whole level")

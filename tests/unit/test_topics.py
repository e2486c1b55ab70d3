"""Topic matching, filter coverage and pattern validation (MQTT 3.1.1 §4.7)."""

from __future__ import annotations

import itertools
import random

import pytest

from cregistry.errors import InvalidInput
from cregistry.topics import (
    expand_pattern,
    filter_is_covered,
    topic_matches,
    validate_filter,
    validate_pattern,
    validate_topic_name,
)


def levels(text: str) -> list[str]:
    return text.split("/")


def matches(pattern: str, topic: str) -> bool:
    return topic_matches(levels(pattern), levels(topic))


def covered(topic_filter: str, *patterns: str) -> bool:
    return filter_is_covered(levels(topic_filter), [levels(p) for p in patterns])


# -- topic_matches --------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("a/b", "a/b"),
        ("a/+", "a/b"),
        ("+/b", "a/b"),
        ("+/+", "a/b"),
        ("a/#", "a/b"),
        ("a/#", "a/b/c/d"),
        ("a/#", "a"),  # '#' includes the parent level
        ("#", "a"),
        ("#", "a/b/c"),
        ("#", "/"),
        ("a/+", "a/"),  # '+' matches an empty level
        ("+/b", "/b"),
        ("a/+/c", "a//c"),
        ("/a", "/a"),
        ("a//b", "a//b"),
        ("$SYS/#", "$SYS/x"),
        ("$SYS/#", "$SYS"),
        ("$SYS/+", "$SYS/x"),
        ("$SYS/x", "$SYS/x"),
        ("a/$x", "a/$x"),
        ("+/$x", "a/$x"),  # only a leading '$' level is special
        ("#", "a/$x"),
    ],
)
def test_matches(pattern: str, topic: str) -> None:
    assert matches(pattern, topic)


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("a/b", "a/c"),
        ("a/b", "a/b/c"),
        ("a/b/c", "a/b"),
        ("a/+", "a"),  # '+' needs a level, even an empty one
        ("a/+", "a/b/c"),
        ("a/+/#", "a"),
        ("a/#", "b"),
        ("a/#", "ab"),
        ("a", "a/"),
        ("a", "A"),
        ("#", "$SYS/x"),
        ("#", "$SYS"),
        ("+/x", "$SYS/x"),
        ("+", "$SYS"),
        ("+/#", "$SYS/x"),
        ("$SYS/#", "$SYSTEM/x"),
    ],
)
def test_does_not_match(pattern: str, topic: str) -> None:
    assert not matches(pattern, topic)


# -- filter_is_covered ----------------------------------------------------------
@pytest.mark.parametrize(
    ("topic_filter", "patterns"),
    [
        ("a/b", ["a/b"]),
        ("a/b", ["a/+"]),
        ("a/b", ["#"]),
        ("a/+/c", ["a/#"]),
        ("a/+/c", ["a/+/c"]),
        ("a/+/c", ["+/+/+"]),
        ("a/#", ["a/#"]),
        ("a/#", ["#"]),
        ("a/b/#", ["a/#"]),
        ("a/#", ["a", "a/+/#"]),  # a union covers what neither pattern does alone
        ("a/+", ["a/b", "a/+"]),
        ("#", ["#"]),
        ("#", ["+/#"]),
        ("+", ["+"]),
        ("+", ["#"]),
        ("+/+", ["+/#"]),
        ("$SYS/#", ["$SYS/#"]),
        ("$SYS/x", ["$SYS/+"]),
        ("$SYS/+", ["$SYS/#"]),
        ("$SYS/#", ["$SYS", "$SYS/+/#"]),
    ],
)
def test_covered(topic_filter: str, patterns: list[str]) -> None:
    assert covered(topic_filter, *patterns)


@pytest.mark.parametrize(
    ("topic_filter", "patterns"),
    [
        ("a/b", []),
        ("a/b", ["a/c"]),
        ("a/+", ["a/b"]),  # '+' can be any value, not only b
        ("a/+", ["a/b", "a/c"]),
        ("a/#", ["a/+"]),
        ("a/#", ["a/+/#"]),  # misses "a" itself
        ("a/#", ["a"]),  # misses "a/b"
        ("a/#", ["a/b/#"]),
        ("a/+/c", ["a/b/c"]),
        ("#", ["+"]),
        ("#", ["a/#"]),
        ("#", ["+/+"]),
        ("+", ["a"]),
        ("+/+", ["+"]),
        ("$SYS/#", ["#"]),  # wildcard-first patterns never reach $-topics
        ("$SYS/x", ["+/x"]),
        ("$SYS/x", ["+/+"]),
        ("$SYS/#", ["+/#"]),
        ("$SYS/#", ["$SYS/+"]),
    ],
)
def test_not_covered(topic_filter: str, patterns: list[str]) -> None:
    assert not covered(topic_filter, *patterns)


# -- brute-force cross-check ----------------------------------------------------
LEVEL_VALUES = ["a", "b", "$x", ""]
# "z" is a level value no filter or pattern names: it stands for all the others.
TOPIC_LEVEL_VALUES = [*LEVEL_VALUES, "z"]


def reference_matches(topic_filter: list[str], topic: list[str]) -> bool:
    """MQTT 3.1.1 §4.7, written independently of cregistry.topics."""
    if topic[0].startswith("$") and topic_filter[0] in ("+", "#"):
        return False
    for index, level in enumerate(topic_filter):
        if level == "#":
            return True
        if index >= len(topic) or level not in ("+", topic[index]):
            return False
    return len(topic_filter) == len(topic)


def small_filters() -> list[list[str]]:
    result = []
    for length in range(1, 4):
        for combo in itertools.product([*LEVEL_VALUES, "+", "#"], repeat=length):
            if "#" in combo[:-1] or "/".join(combo) == "":
                continue
            result.append(list(combo))
    return result


SMALL_FILTERS = small_filters()
SMALL_TOPICS = [
    list(combo)
    for length in range(1, 5)
    for combo in itertools.product(TOPIC_LEVEL_VALUES, repeat=length)
    if "/".join(combo) != ""  # a topic name has at least one character
]


def brute_force_covered(topic_filter: list[str], patterns: list[list[str]]) -> bool:
    return all(
        any(reference_matches(p, topic) for p in patterns)
        for topic in SMALL_TOPICS
        if reference_matches(topic_filter, topic)
    )


def test_topic_matches_agrees_with_the_reference_on_all_small_cases() -> None:
    for topic_filter in SMALL_FILTERS:
        for topic in SMALL_TOPICS:
            assert topic_matches(topic_filter, topic) == reference_matches(topic_filter, topic), (topic_filter, topic)


def test_filter_is_covered_agrees_with_brute_force() -> None:
    rng = random.Random(20240611)
    outcomes = set()
    for _ in range(600):
        topic_filter = rng.choice(SMALL_FILTERS)
        patterns = rng.sample(SMALL_FILTERS, rng.randint(0, 4))
        expected = brute_force_covered(topic_filter, patterns)
        outcomes.add(expected)
        assert filter_is_covered(topic_filter, patterns) == expected, (topic_filter, patterns)
    assert outcomes == {True, False}  # the sample exercised both answers


def test_filter_is_covered_agrees_with_brute_force_on_near_misses() -> None:
    # Random pattern sets mostly fail to cover; these are built from the filter
    # itself, so that covering and almost-covering sets are frequent.
    rng = random.Random(7)
    outcomes = []
    for _ in range(300):
        topic_filter = rng.choice(SMALL_FILTERS)
        patterns = []
        for _ in range(rng.randint(1, 3)):
            pattern = list(topic_filter)
            position = rng.randrange(len(pattern))
            pattern[position] = rng.choice([*LEVEL_VALUES, "+", "#"])
            if pattern[position] == "#":
                pattern = pattern[: position + 1]
            if "/".join(pattern) != "":
                patterns.append(pattern)
        expected = brute_force_covered(topic_filter, patterns)
        outcomes.append(expected)
        assert filter_is_covered(topic_filter, patterns) == expected, (topic_filter, patterns)
    assert True in outcomes and False in outcomes


try:  # optional: a property test when hypothesis happens to be installed
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the cross-checks above do not need it
    pass
else:

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.sampled_from(SMALL_FILTERS), st.lists(st.sampled_from(SMALL_FILTERS), max_size=4))
    def test_filter_is_covered_property(topic_filter: list[str], patterns: list[list[str]]) -> None:
        assert filter_is_covered(topic_filter, patterns) == brute_force_covered(topic_filter, patterns)


# -- validation -----------------------------------------------------------------
@pytest.mark.parametrize("topic_filter", ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "/", "a//b", "$SYS/#", "€/é"])
def test_valid_filters(topic_filter: str) -> None:
    assert validate_filter(topic_filter) == topic_filter.split("/")


@pytest.mark.parametrize(
    "topic_filter",
    ["a/b#", "a/#/b", "#/a", "a+/b", "a/+b", "a/b+", "##", "++", "a/\x00", "", "\ud800", None, 5],
)
def test_invalid_filters(topic_filter: object) -> None:
    with pytest.raises(InvalidInput):
        validate_filter(topic_filter)


def test_filter_size_limit() -> None:
    assert validate_filter("a" * 65535)
    with pytest.raises(InvalidInput):
        validate_filter("a" * 65536)


@pytest.mark.parametrize("topic", ["a", "a/b", "/", "$SYS/x", "a//b"])
def test_valid_topic_names(topic: str) -> None:
    assert validate_topic_name(topic) == topic.split("/")


@pytest.mark.parametrize("topic", ["a/+", "a/#", "+", "#", "a/b+", "a#", "", "a\x00", "\udfff", None])
def test_invalid_topic_names(topic: object) -> None:
    with pytest.raises(InvalidInput):
        validate_topic_name(topic)


@pytest.mark.parametrize("pattern", ["devices/%u/#", "clients/%c", "%u/%c/+", "a/dev-%u-x", "#", "a"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern", ["a/%x", "a/%", "a/%%u", "100%", "a/#/b", "a/b#", "a+/b", "", "a\x00b", "\ud800", None, ["a"]]
)
def test_invalid_patterns(pattern: object) -> None:
    with pytest.raises(InvalidInput):
        validate_pattern(pattern)


# -- expand_pattern -------------------------------------------------------------
def test_expand_username_and_client_id() -> None:
    assert expand_pattern("devices/%u/#", "sensor-1", "c1") == ["devices", "sensor-1", "#"]
    assert expand_pattern("clients/%c/in", "sensor-1", "c-1") == ["clients", "c-1", "in"]
    assert expand_pattern("%u/%c", "sensor-1", "c1") == ["sensor-1", "c1"]
    assert expand_pattern("dev-%u-%c", "abc", "x") == ["dev-abc-x"]
    assert expand_pattern("plain/topic", "abc", "") == ["plain", "topic"]


def test_client_id_text_is_not_expanded_again() -> None:
    assert expand_pattern("a/%c", "abc", "%u") == ["a", "%u"]


@pytest.mark.parametrize("client_id", ["a/b", "/", "+", "a+", "#", "x/#", "", "a\x00"])
def test_client_id_that_would_widen_the_pattern_makes_it_not_apply(client_id: str) -> None:
    assert expand_pattern("clients/%c/#", "abc", client_id) is None


def test_special_client_id_does_not_matter_without_percent_c() -> None:
    assert expand_pattern("devices/%u/#", "abc", "a/#") == ["devices", "abc", "#"]
    assert expand_pattern("devices/%u/#", "abc", "") == ["devices", "abc", "#"]

"""Property-based tests: the validators, pairing IDs and topic matching
checked against independent reference implementations (hypothesis)."""

from __future__ import annotations

import hashlib
import itertools
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cregistry.errors import InvalidInput
from cregistry.names import validate_username
from cregistry.passwords import PasswordPolicy, pairing_id, validate_password_format
from cregistry.topics import expand_pattern, filter_is_covered, topic_matches, validate_filter, validate_topic_name

SETTINGS = settings(max_examples=200, deadline=None, database=None)
# When a property fails, hypothesis imports libcst to suggest a patch, and
# libcst's import warns; under `filterwarnings = error` that would turn the
# failure report into an INTERNALERROR.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

USERNAME_FIRST = frozenset(string.ascii_letters + string.digits)
USERNAME_REST = USERNAME_FIRST | frozenset("_.-")


def is_valid_username(value: object) -> bool:
    """The username rule (3 to 64 ASCII letters, digits, '_', '.', '-', starting
    with a letter or digit), written without a regular expression."""
    return (
        isinstance(value, str)
        and 3 <= len(value) <= 64
        and value[0] in USERNAME_FIRST
        and all(character in USERNAME_REST for character in value)
    )


def is_valid_password_format(value: object) -> bool:
    """str, no NUL, valid Unicode (no lone surrogates), at most 72 bytes of UTF-8."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    if any(0xD800 <= ord(character) <= 0xDFFF for character in value):
        return False
    return len(value.encode("utf-8")) <= 72


def reference_matches(pattern: list[str], topic: list[str]) -> bool:
    """MQTT 3.1.1 §4.7, recursively: '+' one level, '#' the rest (parent
    included), and wildcards at the start never reach $-topics."""
    if pattern[0] in ("+", "#") and topic[0].startswith("$"):
        return False

    def match(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == "#":
            return True
        if not t:
            return False
        return (p[0] == "+" or p[0] == t[0]) and match(p[1:], t[1:])

    return match(pattern, topic)


# Levels that patterns and filters name; topics also use values no pattern
# names ("z", "$z"), which stand for every other value.
PATTERN_LEVELS = ["a", "b", "$s", "", "+"]
TOPIC_LEVELS = ["a", "b", "$s", "", "z", "$z"]
MAX_FILTER_LEVELS = 3


def filters(max_levels: int = MAX_FILTER_LEVELS) -> st.SearchStrategy[list[str]]:
    body = st.lists(st.sampled_from(PATTERN_LEVELS), min_size=0, max_size=max_levels)
    return (
        st.tuples(body, st.booleans())
        .map(lambda parts: parts[0] + ["#"] if parts[1] else parts[0])
        .filter(lambda levels: len(levels) >= 1 and levels != [""])
    )


topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=MAX_FILTER_LEVELS + 2).filter(
    lambda levels: levels != [""]
)

# Every topic up to one level longer than any generated pattern, and near_misses
# makes patterns one level longer than their filter ("a/a/a/#" against "a/a/a/+"
# is shown uncovered by "a/a/a/z/z" only): a topic that shows a filter is not
# covered can always be found among these.
ALL_SMALL_TOPICS = [
    list(combo)
    for length in range(1, MAX_FILTER_LEVELS + 3)
    for combo in itertools.product(["a", "b", "$s", "", "z", "$z"], repeat=length)
    if list(combo) != [""]
]


# -- usernames and passwords ------------------------------------------------------
username_like = st.one_of(
    st.text(alphabet=sorted(USERNAME_REST), max_size=70),
    st.text(alphabet=sorted(USERNAME_REST) + list("/+#:*{}% \t\n\x00é€$"), max_size=70),
    st.text(alphabet=sorted(USERNAME_REST), min_size=62, max_size=66),
    st.text(max_size=70),
)


@SETTINGS
@given(username_like)
def test_username_validation_agrees_with_the_reference(username: str) -> None:
    try:
        accepted = validate_username(username) == username
    except InvalidInput:
        accepted = False
    assert accepted == is_valid_username(username)


@SETTINGS
@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text(max_size=3))))
def test_non_string_usernames_are_invalid_input(value: object) -> None:
    try:
        validate_username(value)
    except InvalidInput:
        return
    raise AssertionError(f"{value!r} was accepted")


# Any code point, lone surrogates (which arrive through JSON "\ud800") included.
any_character = st.one_of(
    st.characters(exclude_categories=()), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
)
password_like = st.one_of(
    st.text(alphabet=any_character, max_size=80),
    st.text(alphabet=any_character, min_size=15, max_size=40),
    st.text(alphabet="aé€\U0001f600", min_size=15, max_size=40),  # around the 72-byte limit
    st.none(),
    st.integers(),
    st.binary(max_size=10),
)


@SETTINGS
@given(password_like)
def test_password_format_raises_only_invalid_input_and_agrees_with_the_reference(password: object) -> None:
    try:
        accepted = validate_password_format(password) == password
    except InvalidInput:
        accepted = False
    assert accepted == is_valid_password_format(password)


@SETTINGS
@given(
    password_like,
    st.integers(min_value=1, max_value=72),
    st.lists(st.sampled_from(["lower", "upper", "digit", "symbol"]), unique=True),
)
def test_password_policy_raises_only_invalid_input(password: object, min_length: int, require: list[str]) -> None:
    policy = PasswordPolicy(min_length, tuple(require))
    try:
        policy.validate(password)
    except InvalidInput:
        return
    # Accepted: then it is well-formed and long enough.
    assert is_valid_password_format(password)
    assert isinstance(password, str) and len(password) >= min_length


# -- pairing IDs --------------------------------------------------------------------
@SETTINGS
@given(st.text(max_size=64), st.text(max_size=72))
def test_pairing_id_is_six_lower_case_hex_digits_and_deterministic(username: str, password: str) -> None:
    value = pairing_id(username, password)
    assert len(value) == 6 and set(value) <= set("0123456789abcdef")
    assert value == pairing_id(username, password)
    assert value == hashlib.sha256((username + ":" + password).encode("utf-8")).hexdigest()[:6]


# -- topic matching -------------------------------------------------------------------
@SETTINGS
@given(filters(), topics)
def test_topic_matches_agrees_with_the_reference(pattern: list[str], topic: list[str]) -> None:
    assert validate_filter("/".join(pattern)) == pattern
    assert validate_topic_name("/".join(topic)) == topic
    assert topic_matches(pattern, topic) == reference_matches(pattern, topic)


@SETTINGS
@given(filters())
def test_a_filter_covers_itself(topic_filter: list[str]) -> None:
    assert filter_is_covered(topic_filter, [topic_filter])


def unreadable_topics(topic_filter: list[str], patterns: list[list[str]]) -> list[list[str]]:
    """The small topics the filter reaches that no pattern matches."""
    return [
        topic
        for topic in ALL_SMALL_TOPICS
        if reference_matches(topic_filter, topic) and not any(reference_matches(p, topic) for p in patterns)
    ]


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    """A filter and patterns made from it by changing, cutting, adding or
    inserting one level: random patterns rarely cover anything, these often
    almost do."""
    topic_filter = draw(filters())
    patterns = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        pattern = list(topic_filter)
        change = draw(st.sampled_from(["replace", "cut", "extend", "insert"]))
        if change == "replace":
            position = draw(st.integers(min_value=0, max_value=len(pattern) - 1))
            pattern[position] = draw(st.sampled_from([*PATTERN_LEVELS, "#"]))
            if pattern[position] == "#":
                pattern = pattern[: position + 1]
        elif change == "cut" and len(pattern) > 1:
            pattern = pattern[:-1]
        elif change == "extend" and pattern[-1] != "#":
            pattern.append(draw(st.sampled_from(["+", "#", "a"])))
        elif change == "insert":
            last = len(pattern) - 1 if pattern[-1] == "#" else len(pattern)
            position = draw(st.integers(min_value=0, max_value=last))
            pattern.insert(position, draw(st.sampled_from(["+", "a"])))
        if pattern != [""]:
            patterns.append(pattern)
    return topic_filter, patterns


cases = st.one_of(st.tuples(filters(), st.lists(filters(), max_size=4)), near_misses())


@SETTINGS
@given(cases)
def test_a_covered_filter_reaches_only_readable_topics(case: tuple[list[str], list[list[str]]]) -> None:
    """The security direction: a granted subscription reaches nothing unreadable."""
    topic_filter, patterns = case
    if filter_is_covered(topic_filter, patterns):
        assert unreadable_topics(topic_filter, patterns) == [], case


@SETTINGS
@example((["", "#"], [["", "+", "#"]]))  # "/#" reaches no topic "/+/#" misses: "" is no topic
@example((["a", "a", "a", "#"], [["a", "a", "a", "+"], ["a", "a", "a"]]))  # its witness has five levels
@given(cases)
def test_a_filter_that_is_not_covered_reaches_an_unreadable_topic(case: tuple[list[str], list[list[str]]]) -> None:
    """Exactness, as topics.filter_is_covered claims: a refusal has a reason."""
    topic_filter, patterns = case
    if not filter_is_covered(topic_filter, patterns):
        assert unreadable_topics(topic_filter, patterns) != [], case


@SETTINGS
@given(filters(), st.lists(filters(), min_size=1, max_size=3), topics)
def test_a_covered_filter_never_reaches_a_topic_no_pattern_matches(
    topic_filter: list[str], patterns: list[list[str]], topic: list[str]
) -> None:
    if filter_is_covered(topic_filter, patterns) and reference_matches(topic_filter, topic):
        assert any(reference_matches(p, topic) for p in patterns)


@SETTINGS
@given(
    st.lists(st.sampled_from(["a", "%c", "%u", "x%cy"]), min_size=1, max_size=4),
    st.text(alphabet="ab/+#$\x00", max_size=6),
)
def test_expanding_a_client_id_never_adds_a_wildcard_or_a_dollar_topic(levels: list[str], client_id: str) -> None:
    pattern = "/".join(levels)
    expanded = expand_pattern(pattern, "user-1", client_id)
    if expanded is None:
        return
    assert len(expanded) == len(levels)
    assert not any(level in ("+", "#") or "+" in level or "#" in level for level in expanded)
    assert not expanded[0].startswith("$")

"""Usernames, passwords, pairing IDs and bcrypt hashing."""

from __future__ import annotations

import hashlib

import pytest

from cregistry import names, passwords
from cregistry.errors import InvalidInput
from cregistry.names import validate_username
from cregistry.passwords import PasswordPolicy, pairing_id


# -- usernames ------------------------------------------------------------------
@pytest.mark.parametrize(
    "username",
    [
        "abc",
        "a" * 64,
        "sensor-17",
        "Sensor_17.kitchen",
        "0device",
        "9-.",
        "a__",
        "ABC",
    ],
)
def test_valid_usernames_are_accepted_unchanged(username: str) -> None:
    assert validate_username(username) == username


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # 2 characters
        "a" * 65,  # 65 characters
        "",
        "_abc",  # must start with a letter or digit
        ".abc",
        "-abc",
        "dev/ice",
        "dev+ice",
        "dev#ice",
        "dev:ice",
        "dev*ice",
        "dev ice",
        " device",
        "device ",
        "dev\tice",
        "dev\nice",
        "device\n",
        "dev\x00ice",
        "dev\x7fice",
        "dévice",
        "devіce",  # Cyrillic і
        "device\u00a0",
        "ｄｅｖｉｃｅ",  # fullwidth letters
        "dev%uice",
        "dev%ice",
        "dev{ice}",
        "dev}ice",
        "dev{ice",
        "dev$ice",
        "dev@ice",
        "dev\\ice",
        "dev,ice",
        "\ud800abc",
    ],
)
def test_invalid_usernames_are_refused(username: str) -> None:
    with pytest.raises(InvalidInput):
        validate_username(username)


@pytest.mark.parametrize("username", [None, 123, b"device", ["abc"], {"a": 1}])
def test_non_string_usernames_are_refused(username: object) -> None:
    with pytest.raises(InvalidInput):
        validate_username(username)


# -- passwords ------------------------------------------------------------------
def test_default_policy_needs_five_characters() -> None:
    policy = PasswordPolicy()
    assert policy.validate("abcde") == "abcde"
    with pytest.raises(InvalidInput, match="at least 5"):
        policy.validate("abcd")


def test_minimum_length_counts_characters_not_bytes() -> None:
    # Five characters, fifteen bytes: long enough.
    assert PasswordPolicy(min_length=5).validate("€€€€€") == "€€€€€"
    with pytest.raises(InvalidInput):
        PasswordPolicy(min_length=5).validate("€€€€")


def test_configured_minimum_length() -> None:
    policy = PasswordPolicy(min_length=12)
    assert policy.validate("a" * 12) == "a" * 12
    with pytest.raises(InvalidInput, match="at least 12"):
        policy.validate("a" * 11)


@pytest.mark.parametrize(
    ("required", "good", "bad"),
    [
        ("lower", "ABCDEf", "ABCDEF"),
        ("upper", "abcdeF", "abcdef"),
        ("digit", "abcde1", "abcdef"),
        ("symbol", "abcde!", "abcde1"),
    ],
)
def test_each_character_class_when_configured(required: str, good: str, bad: str) -> None:
    policy = PasswordPolicy(require=(required,))
    assert policy.validate(good) == good
    with pytest.raises(InvalidInput, match=required):
        policy.validate(bad)


def test_several_character_classes_are_all_required() -> None:
    policy = PasswordPolicy(require=("lower", "upper", "digit", "symbol"))
    assert policy.validate("aB3!xy") == "aB3!xy"
    for missing_one in ("ab3!xy", "AB3!XY", "aBc!xy", "aB3cxy"):
        with pytest.raises(InvalidInput):
            policy.validate(missing_one)


def test_classes_are_not_required_by_default() -> None:
    for password in ("aaaaa", "AAAAA", "11111", "!!!!!"):
        assert PasswordPolicy().validate(password) == password


def test_more_than_72_utf8_bytes_is_refused_not_truncated() -> None:
    password = "€" * 25  # 25 characters, 75 bytes
    assert len(password) == 25 and len(password.encode()) == 75
    with pytest.raises(InvalidInput, match="72 bytes"):
        PasswordPolicy().validate(password)
    with pytest.raises(InvalidInput, match="72 bytes"):
        passwords.validate_password_format(password)
    with pytest.raises(InvalidInput):
        PasswordPolicy().validate("a" * 73)


@pytest.mark.parametrize("password", ["a" * 72, "€" * 24, "€" * 23 + "abc"])
def test_exactly_72_bytes_is_accepted(password: str) -> None:
    assert len(password.encode()) == 72
    assert PasswordPolicy().validate(password) == password


@pytest.mark.parametrize("password", ["abc\x00def", "\x00abcde", "abcde\x00"])
def test_nul_is_refused(password: str) -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        PasswordPolicy().validate(password)
    with pytest.raises(InvalidInput, match="NUL"):
        passwords.validate_password_format(password)


@pytest.mark.parametrize("password", ["\ud800abcdef", "abcdef\udfff", "abc\udc00def"])
def test_lone_surrogate_is_invalid_input_not_a_unicode_error(password: str) -> None:
    # These arrive through JSON "\ud800" escapes; a UnicodeEncodeError would be a 500.
    with pytest.raises(InvalidInput):
        PasswordPolicy().validate(password)
    with pytest.raises(InvalidInput):
        passwords.validate_password_format(password)


@pytest.mark.parametrize("password", [None, 12345, b"abcdef", ["abcdef"]])
def test_non_string_passwords_are_refused(password: object) -> None:
    with pytest.raises(InvalidInput):
        PasswordPolicy().validate(password)


def test_format_check_ignores_the_policy() -> None:
    # Existing passwords are checked only for format, so a tightened policy
    # does not lock out devices registered under the old one.
    assert passwords.validate_password_format("a") == "a"


# -- client ids -----------------------------------------------------------------
def test_client_id_rules() -> None:
    assert names.validate_client_id("") == ""
    assert names.validate_client_id("a/#+ é") == "a/#+ é"
    for bad in ("a\x00b", "\ud800", None, 5):
        with pytest.raises(InvalidInput):
            names.validate_client_id(bad)


# -- pairing IDs ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("sensor-1", "secret1"),
        ("abc", "12345"),
        ("dev.01", "pässwörd€"),
        ("node_7", "日本語のパスワード"),
        ("x-y", "with:colon"),
    ],
)
def test_pairing_id_is_six_hex_digits_of_sha256_of_user_colon_password(username: str, password: str) -> None:
    expected = hashlib.sha256((username + ":" + password).encode("utf-8")).hexdigest()[:6]
    assert pairing_id(username, password) == expected


def test_pairing_id_known_values() -> None:
    # Pinned so that a change of algorithm (device and operator must agree) is noticed.
    assert pairing_id("sensor-1", "secret1") == "e2d3f8"
    assert pairing_id("dev.01", "pässwörd€") == "1b252d"


def test_pairing_id_depends_on_both_parts() -> None:
    assert pairing_id("abc", "12345") != pairing_id("abc", "12346")
    assert pairing_id("abc", "12345") != pairing_id("abd", "12345")


# -- hashing --------------------------------------------------------------------
@pytest.mark.parametrize("password", ["secret1", "pässwörd€", "€" * 24, "a" * 72])
def test_hash_verify_round_trip(password: str) -> None:
    password_hash = passwords.hash_password(password, 4)
    assert password not in password_hash
    assert password_hash.startswith("$2")
    assert passwords.verify_password(password, password_hash)
    assert not passwords.verify_password(password + "x", password_hash)
    assert not passwords.verify_password(password[:-1], password_hash)


def test_hash_uses_the_configured_cost() -> None:
    assert passwords.hash_password("secret1", 5).split("$")[2] == "05"


def test_hash_is_salted() -> None:
    assert passwords.hash_password("secret1", 4) != passwords.hash_password("secret1", 4)


def test_corrupt_hash_never_verifies() -> None:
    good = passwords.hash_password("secret1", 4)
    for corrupt in ("", "garbage", "$2b$04$", good[:-10], good[:29], "secret1", "$2b$99$" + good[7:]):
        assert passwords.verify_password("secret1", corrupt) is False

"""The built-in detectors (gateway.guardrails.detectors), each on examples it must find and
look-alikes it must not: precision matters as much as recall (a redaction of every number
would make answers useless)."""

from __future__ import annotations

import pytest

from gateway.guardrails.detectors import _CLUSTER as CLUSTER
from gateway.guardrails.detectors import (
    API_KEY,
    BUILT_IN,
    CARD,
    EMAIL,
    IBAN,
    IPV4,
    IPV6,
    PHONE,
    PRIVATE_KEY,
    Detector,
    digit_clusters,
    find_all,
    iban,
    luhn,
)

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "-----END RSA PRIVATE KEY-----"
)
FOUND: dict[str, tuple[Detector, list[str]]] = {
    "email": (EMAIL, ["ada@example.com", "first.last+tag@mail.example.co.uk", "x_y@a-b.io"]),
    "phone": (
        PHONE,
        ["+44 20 7946 0958", "(212) 555-0143", "+1-202-555-0173", "030 1234 5678", "08-123 45 67"],
    ),
    "card": (CARD, ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]),
    "iban": (
        IBAN,
        ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"],
    ),
    "ipv4": (IPV4, ["192.168.1.20", "10.0.0.1", "8.8.8.8"]),
    "ipv6": (IPV6, ["2001:db8::ff00:42:8329", "fe80::1", "::1"]),
    "api_key": (
        API_KEY,
        [
            "sk-citadel-0123456789ab-" + "A" * 43,
            "sk-proj-" + "abcdEFGH1234" * 4,
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_" + "a1B2" * 9,
            "xoxb-1234567890-abcdefghij",
            "AIza" + "Sy" * 17 + "x",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ],
    ),
    "private_key": (PRIVATE_KEY, [PEM, PEM.replace("RSA ", "")]),
}
NOT_FOUND: dict[str, tuple[Detector, list[str]]] = {
    "email": (EMAIL, ["ada at example dot com", "@example.com", "ada@localhost", "a@b.c"]),
    "phone": (PHONE, ["2026-12-02", "12:30", "1234", "192.168.1.20", "v1.2.3", "3.14159"]),
    "card": (CARD, ["4111 1111 1111 1112", "1234 5678 9012 3456", "2026 1202", "12345678"]),
    "iban": (IBAN, ["DE89 3704 0044 0532 0130 01", "GB00WEST12345698765432", "ISO9001 certified"]),
    "ipv4": (IPV4, ["999.1.1.1", "1.2.3", "version 1.2.3.4.5", "1.2.3.4..5", "256.256.256.256"]),
    "ipv6": (IPV6, ["12:30:45", "a:b", "::", "the ratio 3:2:1"]),
    "api_key": (API_KEY, ["sk-short", "task-list-of-things", "AKIA-not-a-key", "eyJ.eyJ.x"]),
    "private_key": (PRIVATE_KEY, ["-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"]),
}


@pytest.mark.parametrize("name", FOUND)
def test_each_detector_finds_its_examples_in_a_sentence(name: str) -> None:
    detector, examples = FOUND[name]
    for example in examples:
        text = f"Contact: {example}, thanks."
        spans = detector.find(text)
        assert [text[s.start : s.end] for s in spans] == [example], example


@pytest.mark.parametrize("name", NOT_FOUND)
def test_each_detector_leaves_look_alikes_alone(name: str) -> None:
    detector, examples = NOT_FOUND[name]
    for example in examples:
        assert detector.find(f"Note: {example} here.") == [], example


def test_the_checksums() -> None:
    assert luhn("4111111111111111")
    assert not luhn("4111111111111112")
    assert not luhn("0000 00")  # too short to be a card
    assert iban("DE89370400440532013000")
    assert not iban("DE89370400440532013001")


def test_matches_are_bounded_by_the_declared_maximum() -> None:
    for detector, examples in FOUND.values():
        for example in examples:
            assert len(example) <= detector.max_length, (detector.name, example)


def test_find_all_merges_without_overlaps_in_priority_order() -> None:
    key = "sk-citadel-0123456789ab-" + "7" * 43  # all digits after the id: phone-like too
    # A 13-digit card in groups is shaped like a phone number too: the card wins.
    text = f"mail ada@example.com, key {key}, card 4222 2222 2222 2, ip 10.0.0.1"
    assert PHONE.find(text) != []
    spans = find_all(text)
    assert [(s.kind, text[s.start : s.end]) for s in spans] == [
        ("email", "ada@example.com"),
        ("api_key", key),
        ("payment_card", "4222 2222 2222 2"),
        ("ip_address", "10.0.0.1"),
    ]


def test_plain_prose_has_nothing_to_find() -> None:
    prose = (
        "In 2026 the team shipped version 3.2 of the gateway: 4 models, 12 replicas, p99 under "
        "25 ms at 1,000 requests per second, on 2 cores. See section 4.1.2 for details."
    )
    assert find_all(prose, BUILT_IN) == []


@pytest.mark.parametrize("name", FOUND)
def test_the_shortcuts_of_find_all_drop_no_example(name: str) -> None:
    """find_all skips a detector's scan when the text cannot hold its match (no "@", too few
    digits, no digit cluster): none of the examples may be skipped."""
    detector, examples = FOUND[name]
    for example in examples:
        text = f"Contact: {example}, thanks."
        assert [text[s.start : s.end] for s in find_all(text, (detector,))] == [example], example


def test_digit_clusters_are_the_same_found_over_bytes_or_characters() -> None:
    for text in (
        "Order 1234 shipped on 2026-12-02 to 10.0.0.7, invoice 998877 for 42.50 EUR.",
        "call +44 (20) 7946-0958 or (212) 555.0143; card 4111 1111 1111 1111",
        "no digits at all", "1 2 3 4 5 6 7 8", "+(((((((9",
    ):  # fmt: skip
        assert digit_clusters(text) == [m.span() for m in CLUSTER.finditer(text)], text


def test_digits_of_other_scripts_are_digits_too() -> None:
    fullwidth = "".join(chr(0xFF10 + digit) for digit in range(10))
    wide = "4111 1111 1111 1111".translate(str.maketrans("0123456789", fullwidth))
    text = f"card {wide}, thanks"
    assert [text[s.start : s.end] for s in CARD.find(text)] == [wide]

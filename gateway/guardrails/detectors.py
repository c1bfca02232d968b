"""The built-in detectors: each finds spans of one kind of sensitive text, precisely (a
checksum where the format has one), and says the longest match it can make, so that a
stream's sliding window knows how much to hold back.

A detector is a compiled pattern plus, where the format allows, a validator that rejects
look-alikes: a card number must pass the Luhn check, an IBAN its mod-97 check, an IP
address must parse. Matches never overlap within one detector; `find_all` merges the
detectors' spans, the earliest and then the longest first.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    kind: str  # the detector's name, e.g. "email"


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    placeholder: str  # what a redaction writes, e.g. "[EMAIL]"
    pattern: re.Pattern[str]
    max_length: int  # the longest text a match can be: a stream's window holds this much
    valid: Callable[[str], bool] = lambda text: True
    # A cheap test (substring searches and the text's digit count, in C) that a text may hold
    # a match at all: most prompts have no "@", no key prefix and few digits, and the
    # pattern's scan (tens of microseconds for 2 KB) is skipped for them.
    may_hold: Callable[[str, int], bool] = lambda text, digits: True
    # Matches are runs of digits and separators (cards, phones, IPv4): the pattern runs only
    # over the text's digit clusters (`clusters`), found once for every such detector.
    in_clusters: bool = False
    needs_cluster: bool = False  # a match holds a digit cluster (an IBAN's account number)
    # For streams: a pattern every match holds (a regex), and the characters a match can
    # start with up to it. Without the former in the text, what may still become a match is
    # only the trailing run of the latter, found by a strip in C instead of a partial regex
    # search (which costs an e-mail pattern some 30 µs on every event of a stream).
    required: str | None = None
    lead: str = ""
    starts: tuple[str, ...] = ()  # a match begins with one of these: a trailing run that is
    # no beginning of one (most words, for API keys) can be released at once

    def find(
        self,
        text: str,
        digits: int | None = None,
        clusters: list[tuple[int, int]] | None = None,
    ) -> list[Span]:
        if not self.may_hold(text, count_digits(text) if digits is None else digits):
            return []
        if self.needs_cluster and clusters is not None and not clusters:
            return []
        if not self.in_clusters:
            matches = list(self.pattern.finditer(text))
        else:
            end = len(text)
            matches = [
                match
                for start, stop in (digit_clusters(text) if clusters is None else clusters)
                # Two characters past the cluster: what the pattern's look-ahead reads.
                for match in self.pattern.finditer(text, start, min(end, stop + 2))
            ]
        return [
            Span(match.start(), match.end(), self.name)
            for match in matches
            if self.valid(match.group())
        ]


_NO_DIGITS = str.maketrans("", "", "0123456789")
_DIGIT = re.compile(r"\d")


def count_digits(text: str) -> int:
    if text.isascii():
        return len(text) - len(text.translate(_NO_DIGITS))
    return len(_DIGIT.findall(text))  # other scripts' digits count too (the patterns' \d)


# A run of at least 7 characters of digits and the separators cards, phone numbers and IPv4
# addresses use, starting with a digit, "(" or "+" and ending with a digit.
_CLUSTER = re.compile(r"[\d(+][\d .()+-]{5,}\d")
# The same over an ASCII text's bytes mapped to classes (d: a digit; s: a separator; x:
# anything else), where the scan looks for bytes instead of testing a class at every
# character: 2.8 µs for 2 KB of prose instead of 21.


def _class_of(byte: int) -> int:
    char = chr(byte)
    if char.isdigit():
        return ord("d")
    if char in "(+":
        return byte
    return ord("s") if char in " .)-" else ord("x")


_CLASSES = bytes(_class_of(byte) for byte in range(128)) + b"x" * 128
_CLUSTER_CLASSES = re.compile(rb"[d(+][ds(+]{5,}d")


def digit_clusters(text: str) -> list[tuple[int, int]]:
    if text.isascii():
        classes = text.encode("ascii").translate(_CLASSES)
        return [match.span() for match in _CLUSTER_CLASSES.finditer(classes)]
    return [match.span() for match in _CLUSTER.finditer(text)]


def luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban(text: str) -> bool:
    compact = re.sub(r"\s", "", text).upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 9 <= digits <= 15


# Look-arounds keep a match from starting or ending inside a longer token.
_NOT_WORD_BEFORE = r"(?<![\w.+-])"
_NOT_WORD_AFTER = r"(?![\w-])"

EMAIL = Detector(
    "email",
    "[EMAIL]",
    re.compile(
        _NOT_WORD_BEFORE
        + r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
        r"[A-Za-z]{2,24}" + _NOT_WORD_AFTER
    ),
    max_length=320,
    may_hold=lambda text, digits: "@" in text,
    required="@",
    lead=string.ascii_letters + string.digits + "._%+-",
)
PHONE = Detector(
    "phone",
    "[PHONE]",
    re.compile(
        r"(?<![\w+])"
        r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}"
        r"(?![\w.-]?\d)"
    ),
    max_length=24,
    valid=phone,
    in_clusters=True,
    may_hold=lambda text, digits: digits >= 9,
    required=r"\d",
    lead="+(",
)
CARD = Detector(
    "payment_card",
    "[CARD]",
    re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{3,4}){2,3}(?:[ -]?\d{1,4})?(?![\d-])"),
    max_length=23,
    valid=luhn,
    in_clusters=True,
    may_hold=lambda text, digits: digits >= 13,
    required=r"\d",
)
IBAN = Detector(
    "iban",
    "[IBAN]",
    re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])"),
    max_length=42,
    valid=iban,
    may_hold=lambda text, digits: digits >= 4,  # 2 check digits and a numeric bank code
    needs_cluster=True,
    required=r"\d",
    lead=string.ascii_uppercase,
)
IPV4 = Detector(
    "ip_address",
    "[IP]",
    re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)"),
    max_length=15,
    valid=ip_address,
    in_clusters=True,
    may_hold=lambda text, digits: digits >= 4 and "." in text,
    required=r"\d\.",
    lead=string.digits,
)
IPV6 = Detector(
    "ip_address",
    "[IP]",
    re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])"),
    max_length=39,
    valid=lambda text: text.count(":") >= 2 and text != "::" and ip_address(text),
    may_hold=lambda text, digits: "::" in text or text.count(":") >= 2,
    required=":",
    lead=string.hexdigits,
)
_KEY_PREFIXES = ("sk-", "AKIA", "gh", "github_pat_", "xox", "AIza", "eyJ")
API_KEY = Detector(
    "api_key",
    "[API_KEY]",
    re.compile(
        r"(?<![A-Za-z0-9_-])(?:"
        r"sk-citadel-[0-9a-f]{12}-[A-Za-z0-9_-]{32,64}"  # this gateway's own
        r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,200}"  # OpenAI-style
        r"|AKIA[0-9A-Z]{16}"  # AWS access key id
        r"|gh[pousr]_[A-Za-z0-9]{36,255}"  # GitHub
        r"|github_pat_[A-Za-z0-9_]{60,255}"
        r"|xox[abprs]-[A-Za-z0-9-]{10,200}"  # Slack
        r"|AIza[0-9A-Za-z_-]{35}"  # Google
        r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # a JWT
        r")(?![A-Za-z0-9_-])"
    ),
    max_length=1024,
    may_hold=lambda text, digits: any(prefix in text for prefix in _KEY_PREFIXES),
    required="|".join(re.escape(prefix) for prefix in _KEY_PREFIXES),
    lead=string.ascii_letters + string.digits + "_-",
    starts=_KEY_PREFIXES,
)
PRIVATE_KEY = Detector(
    "private_key",
    "[PRIVATE_KEY]",
    re.compile(
        r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]{0,16384}?"
        r"-----END (?:[A-Z]+ )?PRIVATE KEY-----"
    ),
    max_length=16384 + 80,
    may_hold=lambda text, digits: "PRIVATE KEY-----" in text,
    required="-----B",
    lead="-",
)

BUILT_IN: tuple[Detector, ...] = (PRIVATE_KEY, API_KEY, EMAIL, IBAN, CARD, IPV4, IPV6, PHONE)


def find_all(text: str, detectors: tuple[Detector, ...] = BUILT_IN) -> list[Span]:
    """Every detector's spans, without overlaps: where two overlap, the one found first in
    `detectors`' order wins (a key is not also a phone number), then the earliest."""
    taken: list[Span] = []
    digits = count_digits(text)
    clusters = digit_clusters(text) if digits >= 4 else []
    for detector in detectors:
        for span in detector.find(text, digits, clusters):
            if all(span.end <= other.start or span.start >= other.end for other in taken):
                taken.append(span)
    return sorted(taken, key=lambda span: span.start)

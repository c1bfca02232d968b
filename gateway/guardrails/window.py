"""The sliding window: output rules over a text that arrives in pieces (a streamed choice's
content), without waiting for the whole of it.

Each piece is appended to what is held back, and the rules' stream patterns scan the held
text with partial matching (the `regex` module): a match that reaches the end of the text
seen so far, or a prefix of one, may still grow, so the text from its start is held; the
text before the earliest such start is released, its complete matches redacted (or the
answer blocked). What is held is therefore only a possible match in progress, never more
than the longest match a rule can make: a card number
or a key split across any number of pieces is still caught, and an answer that holds
nothing like one is released as it arrives, but for its last word (which may be the start
of an e-mail address).

A few characters of the released text stay as context for the patterns' look-behinds
(a match must not start inside a longer word).
"""

from __future__ import annotations

from gateway.guardrails.detectors import Span
from gateway.guardrails.engine import CompiledRule, Findings, redact

Match = tuple[int, int, CompiledRule, str]  # start, end, rule, kind (a typed placeholder's)

CONTEXT = 16  # released characters kept for look-behinds (the detectors' are one or two)


class SlidingWindow:
    __slots__ = ("_context", "_held", "_rules")

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self._rules = rules
        self._context = ""
        self._held = ""

    @property
    def held(self) -> int:
        """Characters held back, not yet released."""
        return len(self._held)

    def push(self, piece: str, findings: Findings) -> str:
        """Append `piece`; return the text now safe to release, redacted. A block rule's
        match is noted in `findings`, and only the text before it is returned (the caller
        stops the answer there)."""
        text = self._context + self._held + piece
        start = len(self._context)
        hold = len(text)
        matches: list[Match] = []
        for compiled in self._rules:
            if compiled.stream:
                hold = min(hold, _scan_patterns(compiled, text, start, matches))
            else:
                hold = min(hold, _scan_finder(compiled, text, start, matches))
        # A complete match that straddles the hold is held whole.
        release = hold
        moved = True
        while moved:
            moved = False
            for begin, stop, _, _ in matches:
                if begin < release < stop:
                    release, moved = begin, True
        released = self._release(text, start, release, matches, findings)
        self._context = text[max(0, release - CONTEXT) : release]
        self._held = text[release:]
        return released

    def flush(self, findings: Findings) -> str:
        """The end of the text: everything held, its complete matches redacted."""
        text = self._context + self._held
        start = len(self._context)
        matches: list[Match] = []
        for compiled in self._rules:
            if not compiled.stream:
                matches += [
                    (span.start, span.end, compiled, span.kind)
                    for span in compiled.finder(text, 0, [])
                    if span.start >= start and span.end > span.start
                ]
            for stream in compiled.stream:
                matches += [
                    (match.start(), match.end(), compiled, compiled.rule.id)
                    for match in stream.pattern.finditer(text, start)
                    if match.end() > match.start() and stream.valid(match.group())
                ]
        released = self._release(text, start, len(text), matches, findings)
        self._context, self._held = "", ""
        return released

    @staticmethod
    def _release(
        text: str, start: int, release: int, matches: list[Match], findings: Findings
    ) -> str:
        """The text from `start` to `release`, redacted; up to a block rule's match only,
        if one is in it (the caller stops the answer there)."""
        spans = []
        for begin, stop, compiled, kind in sorted(matches, key=lambda match: match[0]):
            if stop > release:
                continue
            findings.hit(compiled)
            if compiled.rule.action == "block":
                release = begin
                break
            if compiled.rule.action == "redact":
                spans.append((begin - start, stop - start, compiled.label(Span(0, 0, kind))))
        piece = text[start:release]
        spans = [span for span in spans if span[1] <= release - start]
        return redact(piece, spans) if spans else piece


def _scan_patterns(compiled: CompiledRule, text: str, start: int, matches: list[Match]) -> int:
    """The rule's final matches in `text` from `start` (added to `matches`), and where what
    may still become a match begins (the text's end if nothing may)."""
    end = len(text)
    hold = end
    for stream in compiled.stream:
        if stream.required is not None and stream.required.search(text) is None:
            lead = len(text.rstrip(stream.lead))  # no match yet; maybe one coming
            run = text[lead:]
            if (
                run
                and len(run) <= stream.max_length
                and (not stream.starts or any(s.startswith(run) for s in stream.starts))
            ):
                hold = min(hold, max(lead, start))
            continue
        for match in stream.pattern.finditer(text, start, partial=True):
            begin, stop = match.span()
            if begin == stop:
                continue
            # Not final either: a complete match (valid or not) that more text could still
            # extend or undo ("ada@mail.example" + ".org", "1.2.3.4." + "5"): the text from
            # its start to the end may be the start of a match.
            if match.partial or stream.pattern.fullmatch(text, begin, partial=True) is not None:
                if end - begin <= stream.max_length:
                    hold = min(hold, begin)
                continue
            if stream.valid(match.group()):
                matches.append((begin, stop, compiled, compiled.rule.id))
    return hold


def _scan_finder(compiled: CompiledRule, text: str, start: int, matches: list[Match]) -> int:
    """A rule without partial matching (Presidio's): its last `hold` characters always wait,
    and so does a match that reaches into them (it may grow)."""
    end = len(text)
    hold = max(start, end - compiled.hold)
    for span in compiled.finder(text, 0, []):
        if span.start < start or span.end <= span.start:
            continue
        if span.end > end - compiled.hold:
            hold = min(hold, span.start)
        else:
            matches.append((span.start, span.end, compiled, span.kind))
    return hold

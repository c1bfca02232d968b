"""What the built-in detectors cost on a prompt: every detector over 2 KB of text, for
prose, for text full of numbers, and for text holding one of each kind of match.

    python -m ops.bench.guardrails [--calls 5000]

(#15's target for the default policy on a non-streaming request: under 50 µs for 2 KB.)
"""

from __future__ import annotations

import argparse
import time

from gateway.guardrails.detectors import find_all

PROSE = "The quarterly figures were steady across 4 regions; see the notes in section 3. "
NUMBERS = "Order 1234 shipped on 2026-12-02 to 10.0.0.7, invoice 998877 for 42.50 EUR. "
PII = (
    "Reach ada@example.com or +44 20 7946 0958; card 4111 1111 1111 1111, IBAN "
    "DE89 3704 0044 0532 0130 00, host 10.0.0.7. "
)


def sample(unit: str, size: int = 2048) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    print("| 2 KB of | matches | µs per call |")
    print("|---|---:|---:|")
    for name, unit in (("prose", PROSE), ("numbers", NUMBERS), ("PII", PII)):
        text = sample(unit)
        found = len(find_all(text))
        started = time.perf_counter()
        for _ in range(args.calls):
            find_all(text)
        cost = (time.perf_counter() - started) / args.calls * 1e6
        print(f"| {name} | {found} | {cost:.1f} |")


if __name__ == "__main__":
    main()

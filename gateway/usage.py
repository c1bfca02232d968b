"""Token usage as the upstream reports it, read from the bytes without parsing the answer.

`"prompt_tokens":` with bare quotes can only be a JSON key (quotes inside strings are
escaped), so a search of the raw bytes finds the usage object's numbers and nothing a model
generated.
"""

from __future__ import annotations

import re

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def usage_of(data: bytes) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) if `data` holds a usage object with numbers."""
    if b'"usage"' not in data:
        return None
    prompt = _PROMPT.search(data)
    if prompt is None:
        return None  # "usage": null, as in every chunk of some streams
    completion = _COMPLETION.search(data)
    return int(prompt.group(1)), int(completion.group(1)) if completion else 0

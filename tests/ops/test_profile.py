"""ops.bench.profile's summary of py-spy's collapsed stacks: one row a function (not a line),
self time from the top frame, inclusive time counted once a stack."""

from __future__ import annotations

from pathlib import Path

from ops.bench.profile import summarise

STACKS = (
    "Runner.run (asyncio/runners.py:118);handle (gateway/http/handlers.py:120);"
    "_digest (actors/auth/actor.py:304) 3\n"
    "Runner.run (asyncio/runners.py:118);handle (gateway/http/handlers.py:131) 1\n"
    # recursion: a function twice in one stack counts once inclusively
    "Runner.run (asyncio/runners.py:118);walk (x/tree.py:5);walk (x/tree.py:9) 4\n"
    "write (/v/lib/python3.11/site-packages/aiohttp/http_writer.py:116) 2\n"
)


def rows(text: str, heading: str) -> dict[str, float]:
    section = text.split(heading, 1)[1].split("\n\n", 1)[0]
    found = {}
    for line in section.strip().splitlines():
        share, name = line.split()
        found[name] = float(share)
    return found


def test_shares_are_per_function_self_and_inclusive(tmp_path: Path) -> None:
    collapsed = tmp_path / "stacks.collapsed"
    collapsed.write_text(STACKS)
    text = summarise(collapsed, top=10)
    assert text.startswith("10 samples")
    own = rows(text, "self %  function\n")
    assert own == {
        "x/tree.py:walk": 40.0,
        "actors/auth/actor.py:_digest": 30.0,
        "aiohttp/http_writer.py:write": 20.0,
        "gateway/http/handlers.py:handle": 10.0,
    }
    anywhere = rows(text, "incl %  function\n")
    assert anywhere["asyncio/runners.py:Runner.run"] == 80.0
    assert anywhere["gateway/http/handlers.py:handle"] == 40.0  # two lines, one function
    assert anywhere["x/tree.py:walk"] == 40.0


def test_top_bounds_each_table(tmp_path: Path) -> None:
    collapsed = tmp_path / "stacks.collapsed"
    collapsed.write_text(STACKS)
    assert len(rows(summarise(collapsed, top=2), "self %  function\n")) == 2

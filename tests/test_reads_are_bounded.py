"""Every network read in the tests has a bound (docs/testing.md). A read that hangs fails its
test in seconds with a traceback pointing at it, not at pytest-timeout five minutes later.

Checked from the tests' source, so that a new test cannot quietly add an unbounded read:
- an aiohttp `ClientSession` or an `openai` client is built with `timeout=`;
- a raw stream read (`reader.read*`, a subprocess's `stdout.readline`) sits inside
  `async with asyncio.timeout(...)` or `asyncio.wait_for(...)`, or in a helper every caller
  of which does (listed below, with why);
- a blocking socket's `recv` comes after a `settimeout` in the same function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).parent
RAW_READS = {"read", "readline", "readuntil", "readexactly"}
# Helpers whose raw reads are bounded where they are awaited, or that end with the process.
BOUNDED_BY_CALLER = {
    ("test_lifecycle.py", "drain"),  # reads a pipe to EOF; ends when the process does
}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_timeout_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.AsyncWith):
        return False
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call) and _name(call.func) == "timeout":
            return True
    return False


def _violations(path: Path, root: Path = TESTS) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent

    def enclosing(node: ast.AST) -> Iterator[ast.AST]:
        while node in parents:
            node = parents[node]
            yield node

    def function_of(node: ast.AST) -> ast.AST | None:
        return next(
            (n for n in enclosing(node) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)),
            None,
        )

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{path.relative_to(root)}:{node.lineno}"
        callee = _name(node.func)
        keywords = {k.arg for k in node.keywords}
        if callee in {"ClientSession", "AsyncOpenAI", "OpenAI"} and "timeout" not in keywords:
            yield f"{where}: {callee}(...) without timeout="
        if not isinstance(node.func, ast.Attribute):
            continue
        owner = _name(node.func.value)
        if (callee in RAW_READS and owner in {"reader", "stdout"}) or callee == "sock_recv":
            function = function_of(node)
            function_name = getattr(function, "name", "")
            bounded = any(
                _is_timeout_block(n) or (isinstance(n, ast.Call) and _name(n.func) == "wait_for")
                for n in enclosing(node)
            )
            if not bounded and (path.name, function_name) not in BOUNDED_BY_CALLER:
                yield f"{where}: {owner}.{callee}() outside asyncio.timeout"
        if callee == "recv":
            function = function_of(node)
            assert function is not None
            settled = any(
                isinstance(n, ast.Call)
                and _name(n.func) in {"settimeout", "setblocking"}
                and n.lineno < node.lineno
                for n in ast.walk(function)
            )
            if not settled:
                yield f"{where}: {owner}.recv() on a socket without settimeout"


def test_every_network_read_in_the_tests_has_a_bound() -> None:
    found = [v for path in sorted(TESTS.rglob("*.py")) for v in _violations(path)]
    assert not found, "unbounded reads:\n" + "\n".join(found)


def test_the_checker_finds_an_unbounded_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample_unbounded.py"
    sample.write_text(
        "import aiohttp, asyncio\n"
        "async def f(reader):\n"
        "    async with aiohttp.ClientSession() as s:\n"
        "        await reader.readline()\n"
        "    async with asyncio.timeout(1):\n"
        "        await reader.read()\n"
    )
    found = list(_violations(sample, root=tmp_path))
    assert found == [
        "sample_unbounded.py:3: ClientSession(...) without timeout=",
        "sample_unbounded.py:4: reader.readline() outside asyncio.timeout",
    ]

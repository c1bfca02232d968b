"""quick_init (actors.kernel.frozen): the same objects as dataclasses' own frozen __init__
makes, refused the same way, and left alone where it cannot do the same."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import InitVar, dataclass, field
from typing import Any

import pytest

from actors.kernel.frozen import quick_init
from actors.kernel.message import Ask


@dataclass(frozen=True, slots=True)
class PlainMessage(Ask[int]):
    lease_id: int
    backend: str
    latency: float = 0.5
    ttft: float | None = None
    tags: tuple[str, ...] = ("a",)
    headers: dict[str, str] = field(default_factory=dict, hash=False)


@quick_init
@dataclass(frozen=True, slots=True)
class QuickMessage(Ask[int]):  # the same fields as PlainMessage's
    lease_id: int
    backend: str
    latency: float = 0.5
    ttft: float | None = None
    tags: tuple[str, ...] = ("a",)
    headers: dict[str, str] = field(default_factory=dict, hash=False)


def twins() -> tuple[type[Any], type[Any]]:
    """One class, defined twice: as dataclasses writes it, and with quick_init."""
    return PlainMessage, QuickMessage


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1, "m#0"), {}),
    ((1, "m#0", 2.0), {}),
    ((1, "m#0", 2.0, 0.1, ("x", "y")), {}),
    ((), {"lease_id": 3, "backend": "b", "ttft": 0.2}),
    ((4,), {"backend": "c", "tags": ()}),
    ((5, "d", 1.0, None, (), {"x-a": "1"}), {}),
    ((6, "e"), {"headers": {}}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_it_builds_what_the_dataclass_init_builds(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    plain, quick = twins()
    assert quick.__init__ is not plain.__init__
    expected, got = plain(*args, **kwargs), quick(*args, **kwargs)
    assert dataclasses.astuple(got) == dataclasses.astuple(expected)
    assert repr(got).split("(", 1)[1] == repr(expected).split("(", 1)[1]
    assert got == quick(*args, **kwargs)
    assert hash(got) == hash(quick(*args, **kwargs))
    assert pickle.loads(pickle.dumps(got)) == got
    # A field a call leaves out takes its default, as the dataclass's would; a factory's
    # default is made afresh for each object.
    assert got.tags == expected.tags
    if "headers" not in kwargs and len(args) < 6:
        assert got.headers == {}
        assert got.headers is not quick(*args, **kwargs).headers


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),  # a required field missing
        ((1, "b", 1.0, None, (), {}, "extra"), {}),  # one too many
        ((1, "b"), {"lease_id": 2}),  # given twice
        ((1, "b"), {"unknown": 1}),
    ],
)
def test_it_refuses_the_calls_the_dataclass_init_refuses(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    plain, quick = twins()
    with pytest.raises(TypeError):
        plain(*args, **kwargs)
    with pytest.raises(TypeError):
        quick(*args, **kwargs)


def test_it_stays_frozen() -> None:
    _, quick = twins()
    message = quick(1, "m#0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.lease_id = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        del message.backend
    assert not hasattr(message, "__dict__")  # slotted: no room for more


def test_inherited_fields_are_stored_too() -> None:
    @dataclass(frozen=True, slots=True)
    class Base:
        a: int

    @quick_init
    @dataclass(frozen=True, slots=True)
    class Derived(Base):
        b: str = "x"

    assert dataclasses.astuple(Derived(1)) == (1, "x")
    assert dataclasses.astuple(Derived(2, b="y")) == (2, "y")


def test_what_it_cannot_do_the_same_way_keeps_the_dataclass_init() -> None:
    @dataclass(frozen=True, slots=True)
    class Later:
        a: int
        b: int = 0

        def __post_init__(self) -> None:
            object.__setattr__(self, "b", self.a * 2)

    @dataclass(frozen=True, slots=True)
    class Hidden:
        a: int
        b: int = field(default=0, init=False)

    @dataclass(frozen=True, slots=True)
    class Passed:
        a: int
        scale: InitVar[int] = 1

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Named:
        a: int

    classes: tuple[type[Any], ...] = (Later, Hidden, Passed, Named)
    for cls in classes:
        original = cls.__init__
        assert quick_init(cls).__init__ is original, cls
    assert Later(2).b == 4


def test_it_is_only_for_frozen_slotted_dataclasses() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    class NotADataclass:
        pass

    for cls in (Mutable, Unslotted, NotADataclass):
        with pytest.raises(TypeError):
            quick_init(cls)

"""A cheaper `__init__` for the frozen, slotted dataclasses built on every request.

A frozen dataclass cannot assign its fields, so the `__init__` dataclasses writes for it sets
each one with `object.__setattr__`: a global lookup, an attribute lookup and a generic call a
field. A slotted class has a descriptor of its own for each field, and calling that
descriptor's `__set__` directly does the same store for about half the cost (a 4-field
message: 0.63 -> 0.33 µs; the lease, 11 fields, more). The messages of one request's life
(its lease, route, verdict, release...) are a few dozen such stores.

`quick_init` replaces only `__init__`, and only where that is all `__init__` does: a class
with a `__post_init__`, an `InitVar`, a keyword-only field or a field outside `__init__`
keeps the one dataclasses wrote. Equality, hashing, repr, pickling and the frozen refusal of
assignment are still dataclasses' own. tests/actors/kernel/test_frozen.py holds the two side
by side.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
_UNSET = object()  # the default of a field with a default factory: the call gave none


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen, slotted dataclass `cls` an `__init__` that stores through its slots'
    descriptors. Apply it outside the `@dataclass(frozen=True, slots=True)`."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init is for frozen, slotted dataclasses")
    klass: Any = cls  # a dataclass, which the type checker cannot tell from T
    fields = dataclasses.fields(klass)
    every = klass.__dataclass_fields__.values()  # InitVars and ClassVars included
    plain = all(f._field_type is dataclasses._FIELD for f in every)  # type: ignore[attr-defined]
    if (
        hasattr(cls, "__post_init__")
        or not plain
        or any(not f.init or f.kw_only for f in fields)
    ):  # fmt: skip
        return cls
    closure: dict[str, object] = {"_unset": _UNSET}
    params_text, stores = [], []
    for index, f in enumerate(fields):
        closure[f"_set{index}"] = getattr(cls, f.name).__set__
        value = f.name
        if f.default_factory is not dataclasses.MISSING:  # a fresh default each call
            closure[f"_factory{index}"] = f.default_factory
            params_text.append(f"{f.name}=_unset")
            value = f"_factory{index}() if {f.name} is _unset else {f.name}"
        elif f.default is not dataclasses.MISSING:
            closure[f"_default{index}"] = f.default
            params_text.append(f"{f.name}=_default{index}")
        else:
            params_text.append(f.name)
        stores.append(f"        _set{index}(self, {value})")
    # The same way dataclasses builds its own: source text, compiled once per class, with
    # the descriptors and defaults as the closure's free variables.
    source = "\n".join(
        [
            f"def _make({', '.join(closure)}):",
            f"    def __init__(self, {', '.join(params_text)}):",
            *(stores or ["        pass"]),
            "    return __init__",
        ]
    )
    namespace: dict[str, object] = {}
    exec(source, namespace)
    init = namespace["_make"](**closure)  # type: ignore[operator]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = klass.__init__.__doc__
    klass.__init__ = init
    return cls

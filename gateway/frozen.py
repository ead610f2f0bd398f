"""Frozen dataclasses made in one step: for the objects every routed call builds.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its own
``__setattr__`` refuses), a call of a C wrapper per field: for the call's context of fifteen
fields that is three times the cost of a mutable class's ``__init__``. ``made_in_one_step``
gives such a class an ``__init__`` that hands the instance its attribute dictionary at once,
with one ``object.__setattr__`` however many fields it has. Everything else is the dataclass's:
the same fields, defaults, ``repr``, ``==``, ``hash``, ``dataclasses.replace``, and
assignment or deletion of an attribute still raise ``FrozenInstanceError``.

The class keeps its attributes in a ``__dict__`` (a frozen dataclass with ``slots=True`` cannot
be made in one step); its fields must all be set by ``__init__``, without a default factory,
keyword-only fields or ``__post_init__``, which is what the call's objects need.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, TypeVar

T = TypeVar("T")

_SETTER: Final = "_frozen_object_setattr"


def made_in_one_step(cls: type[T]) -> type[T]:
    """Give the frozen dataclass ``cls`` an ``__init__`` that sets its fields in one step."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__} has slots: its fields cannot be set in one step")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    declared: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(cls)  # type: ignore[arg-type]
    namespace: dict[str, Any] = {_SETTER: object.__setattr__}
    arguments: list[str] = []
    for f in declared:
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain fields can be set in one step")
        if f.name == _SETTER:
            raise TypeError(f"{cls.__name__}.{f.name}: the name is taken")
        if f.default is dataclasses.MISSING:
            arguments.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            arguments.append(f"{f.name}=_default_{f.name}")
    attributes = ", ".join(f"{f.name!r}: {f.name}" for f in declared)
    source = (
        f"def __init__(self, {', '.join(arguments)}):\n"
        f"    {_SETTER}(self, '__dict__', {{{attributes}}})\n"
    )
    exec(source, namespace)  # noqa: S102 - generated from the class's own field names, as dataclasses does
    init = namespace["__init__"]
    generated = cls.__init__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(generated.__annotations__)
    init.__doc__ = generated.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls

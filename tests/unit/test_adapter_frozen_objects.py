"""The call's objects (gateway/frozen.py: ``made_in_one_step``) are made with one
``object.__setattr__`` instead of one per field; they must behave as the frozen dataclasses they
were: the same signature, defaults, ``repr``, ``==``, ``hash`` and ``dataclasses.replace``, and
an adapter still cannot assign, add or delete an attribute."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from gateway.adapter import Call, CallContext, Reply
from gateway.audit.calls import CallOutcome
from gateway.audit.store import StoredRecord
from gateway.catalog import CallResult
from gateway.consent.contract import DataSubject
from gateway.frozen import made_in_one_step
from gateway.pipeline import CallTrace
from gateway.subjects import Binding, Named

CONTEXT: dict[str, Any] = {
    "request_id": "r-1",
    "purpose": "benchmark",
    "service": "svc",
    "receiving_province": "63",
    "handling_province": "61",
    "principal": "pw-1",
    "actor": "pw-2",
    "level": "L3",
}


def _samples() -> list[Any]:
    context = CallContext(**CONTEXT, client="c", subjects=("pk-1",), subject_hashes="person:ab")
    subject = DataSubject("person", "pk-1")
    return [
        context,
        Call("Echo", {"zjhm": "x"}, context),
        Reply({"ok": True}, 200, "sha256:1", "sha256:2"),
        CallOutcome(1, 1.5, "closed", reply=Reply(None)),
        CallResult({"ok": True}, CallTrace(), None, None),
        subject,
        Named(subject, None, "91630000MA0000000X"),
        Binding((subject,), "cg-1"),
        StoredRecord("gw", 1, "2026-12-07T06:00:00.000000Z", "{}", "f" * 64, None, ("pk-1",)),
    ]


@pytest.mark.parametrize("made", _samples(), ids=lambda m: type(m).__name__)
def test_no_attribute_can_be_assigned_added_or_deleted(made: Any) -> None:
    first = dataclasses.fields(made)[0].name
    before = getattr(made, first)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, "changed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(made, first)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.not_a_field = 1
    assert getattr(made, first) is before
    assert not hasattr(made, "not_a_field")


@pytest.mark.parametrize("made", _samples(), ids=lambda m: type(m).__name__)
def test_equal_hash_replace_as_a_frozen_dataclass(made: Any) -> None:
    again = dataclasses.replace(made)
    assert again == made
    assert again is not made
    try:
        hash(made)
    except TypeError:  # a field holds a dict: unhashable, as the dataclass was
        pass
    else:
        assert hash(again) == hash(made)
    names = [f.name for f in dataclasses.fields(made)]
    assert dict(vars(made)) == {name: getattr(made, name) for name in names}


def test_the_context_keeps_its_signature_defaults_and_repr() -> None:
    @dataclasses.dataclass(frozen=True)
    class Twin:
        a: str
        b: int = 2
        c: tuple[str, ...] = ()

    @made_in_one_step
    @dataclasses.dataclass(frozen=True)
    class Quick:
        a: str
        b: int = 2
        c: tuple[str, ...] = ()

    quick = Quick
    assert str(inspect.signature(quick)) == str(inspect.signature(Twin))
    assert repr(quick("x")) == repr(Twin("x")).replace("Twin", "Quick")
    assert quick("x", c=("k",)).c == ("k",)
    assert quick("x", 3) == quick(a="x", b=3)
    assert quick("x") != quick("y")
    with pytest.raises(TypeError):
        quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        quick("x", 1, (), "too many")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        quick("x", nope=1)  # type: ignore[call-arg]

    context = CallContext(**CONTEXT)
    assert (context.case_id, context.subjects, context.subject_hashes) == (None, (), None)
    assert repr(context).startswith("CallContext(request_id='r-1', purpose='benchmark'")
    assert (
        repr(Named(DataSubject("person", "pk-123456789"), None, "id")) == "Named(person, pk-123…)"
    )


def test_only_plain_frozen_dataclasses_are_accepted() -> None:
    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class KeywordOnly:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    class Plain:
        pass

    for cls in (Mutable, Slotted, Factory, Checked, KeywordOnly, Derived, Plain):
        with pytest.raises(TypeError):
            made_in_one_step(cls)

"""``Catalog.route`` answers a call's names from one dictionary when they name an agreement
exactly; every other call gets what the rule-by-rule lookup gives: the operation of a service
of only one, the agreement for any receiving province ("*"), or the same error."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.catalog import Catalog
from gateway.errors import GatewayError, NoAgreement, UnknownOperation, UnknownService

SERVICES: dict[str, Any] = {
    "one": SimpleNamespace(operations={"only": object()}, linked=None),
    "many": SimpleNamespace(operations={"a": object(), "b": object()}, linked=None),
}
AGREEMENTS: dict[tuple[str, str, str, str], Any] = {
    ("one", "only", "11", "21"): SimpleNamespace(name="one/only 11→21"),
    ("one", "only", "*", "22"): SimpleNamespace(name="one/only *→22"),
    ("one", "only", "12", "22"): SimpleNamespace(name="one/only 12→22"),
    ("many", "a", "11", "21"): SimpleNamespace(name="many/a 11→21"),
    ("many", "b", "*", "21"): SimpleNamespace(name="many/b *→21"),
}


def _rule_by_rule(code: str, operation: str | None, receiving: str, handling: str) -> Any:
    """The lookup as written before the dictionary of exact names."""
    if code not in SERVICES:
        raise UnknownService(f"There is no service {code!r} in the catalogue.")
    service = SERVICES[code]
    if operation is None:
        if len(service.operations) != 1:
            raise UnknownOperation(
                f"Service {code!r} has several operations; name one of "
                f"{sorted(service.operations)}."
            )
        operation = next(iter(service.operations))
    if operation not in service.operations:
        raise UnknownOperation(
            f"Service {code!r} has no operation {operation!r}; it has {sorted(service.operations)}."
        )
    route = AGREEMENTS.get((code, operation, receiving, handling)) or AGREEMENTS.get(
        (code, operation, "*", handling)
    )
    if route is None:
        raise NoAgreement(
            f"No agreement lets province {receiving} use {code}/{operation} "
            f"handled in province {handling}."
        )
    return route


def _answer(lookup: Any, *names: Any) -> tuple[str, Any]:
    try:
        return "route", lookup(*names)
    except GatewayError as exc:
        return type(exc).__name__, str(exc)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(SERVICES, AGREEMENTS.values(), AGREEMENTS)


def test_every_name_gets_what_the_rule_by_rule_lookup_gives(catalog: Catalog) -> None:
    names = itertools.product(
        ["one", "many", "none"],
        [None, "only", "a", "b", "x"],
        ["11", "12", "13", "*"],
        ["21", "22", "23"],
    )
    answered = 0
    for code, operation, receiving, handling in names:
        expected = _answer(_rule_by_rule, code, operation, receiving, handling)
        got = _answer(catalog.route, code, operation, receiving, handling)
        assert got[0] == expected[0], (code, operation, receiving, handling)
        if expected[0] == "route":
            assert got[1] is expected[1]
            answered += 1
        else:
            assert got[1] == expected[1]
    assert answered > 10


def test_the_operation_may_be_left_out_only_when_there_is_one(catalog: Catalog) -> None:
    assert catalog.route("one", None, "11", "21") is AGREEMENTS[("one", "only", "11", "21")]
    assert catalog.route("one", None, "13", "22") is AGREEMENTS[("one", "only", "*", "22")]
    with pytest.raises(UnknownOperation):
        catalog.route("many", None, "11", "21")
    with pytest.raises(NoAgreement):
        catalog.route("one", None, "13", "21")


def test_the_guide_lists_the_agreements_only(catalog: Catalog) -> None:
    listed = catalog.agreements("one")
    assert {(a["operation"], a["receiving"], a["handling"]) for a in listed} == {
        ("only", "11", "21"),
        ("only", "*", "22"),
        ("only", "12", "22"),
    }

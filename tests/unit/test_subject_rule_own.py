"""The subject rule's shortcuts for a call on its caller's own data give the answers of the rule
they stand in for.

- ``SubjectRule.own`` (the binding without the book, nor a coroutine) and ``check`` against the
  rule as it was written before them (``_reference_check`` below, kept here verbatim in its
  logic): every principal (the holder, another person, an enterprise's operator, a machine
  client, a token without a person key) against every declaration (``caller``, ``public``, one
  person, two persons, an enterprise, a department's case authority), with and without a grant:
  the same binding or the same refusal, and the same uses asked of the book. ``own`` answers
  only when nobody but the principal (or the case's subjects) is named: for anyone else it
  says "ask the book", however often the holder's own call came first.
- The naming walk on the declaration's plan against the walk by path text it replaced: nested
  paths, an ID-type field, blank and missing values, a value that is not text, data that is no
  object.
- ``Binding.province_subjects`` against ``assertion_subjects`` and the join the call's context
  made of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.consent.contract import DataSubject, GrantAsk, GrantRefused, GrantUse
from gateway.errors import GatewayError, NotDataSubject
from gateway.identity.identifiers import RESIDENT_ID_CARD
from gateway.identity.subject_keys import (
    SubjectKeys,
    province_enterprise_hash,
    province_person_hash,
)
from gateway.principal import Principal
from gateway.subject_config import SubjectDeclaration, SubjectField
from gateway.subjects import (
    MACHINE_LEVEL,
    PUBLIC,
    Binding,
    Named,
    SubjectRule,
    named_subjects,
    principal_subject,
    requester_of,
)
from tests.consent_books import MemoryConsentBook, TestGrant

KEYS = SubjectKeys(
    pairwise_secret=SecretStr("test-pairwise-secret-0123456789abcdef"),
    link_secret=SecretStr("test-link-secret-0123456789abcdef0123"),
)
HOLDER = "610102199001011234"
OTHER = "61010219900101123X"
CREDIT = "91630000MA0000000X"
SERVICE = "svc"

HOLDER_KEY = KEYS.person(HOLDER).key
OTHER_KEY = KEYS.person(OTHER).key
ENTERPRISE_KEY = KEYS.enterprise(CREDIT).key

PRINCIPALS = {
    "holder": Principal("ps-1", "L2", "portal", person=HOLDER_KEY),
    "other": Principal("ps-2", "L2", "portal", person=OTHER_KEY),
    "operator": Principal("ps-3", "LP", "portal", enterprise=ENTERPRISE_KEY),
    "machine": Principal("m-1", MACHINE_LEVEL, "system-61", person=HOLDER_KEY),
    "no key": Principal("ps-4", "L2", "portal"),
    "holder's key as subject": Principal(HOLDER_KEY, "L2", "portal"),
    "holder's key as an enterprise": Principal("ps-5", "LP", "portal", enterprise=HOLDER_KEY),
}
PERSON = (SubjectField(person="holder_id"),)
TWO = (SubjectField(person="seller.id_number"), SubjectField(person="buyer.id_number"))
ENTERPRISE = (SubjectField(enterprise="credit_code"),)
DECLARATIONS: dict[str, tuple[SubjectDeclaration, dict[str, Any]]] = {
    "caller": ("caller", {}),
    "public": ("public", {}),
    "holder": (PERSON, {"holder_id": HOLDER}),
    "other": (PERSON, {"holder_id": OTHER}),
    "two": (TWO, {"seller": {"id_number": HOLDER}, "buyer": {"id_number": OTHER}}),
    "holder twice": (TWO, {"seller": {"id_number": HOLDER}, "buyer": {"id_number": HOLDER}}),
    "enterprise": (ENTERPRISE, {"credit_code": CREDIT}),
}


def _book() -> MemoryConsentBook:
    book = MemoryConsentBook()
    for person in ("holder", "other"):
        subject = KEYS.person(HOLDER if person == "holder" else OTHER)
        book.grants[f"g-{person}"] = TestGrant(subject, "portal", SERVICE, uses=3)
        book.grants[f"g-{person}-sys"] = TestGrant(subject, "system-61", SERVICE)
    book.grants["g-ent"] = TestGrant(KEYS.enterprise(CREDIT), "portal", SERVICE, uses=2)
    return book


async def _reference_check(
    book: MemoryConsentBook,
    principal: Principal,
    declaration: SubjectDeclaration,
    named: Sequence[Named],
    consent: Sequence[str],
    authority: Iterable[DataSubject] | None,
) -> Binding:
    """``SubjectRule.check`` as it was before ``own``: the comparison, then the book."""
    if declaration == "public":
        return PUBLIC
    if declaration == "caller":
        if principal.level == MACHINE_LEVEL:
            raise NotDataSubject("machine")
        own = principal_subject(principal)
        return Binding((own or DataSubject("person", principal.owner),))
    mine = principal_subject(principal)
    allowed = set(authority) if authority else None
    others = [
        n.subject
        for n in named
        if n.subject != mine and (allowed is None or n.subject not in allowed)
    ]
    used: list[str] = []
    spent: list[tuple[GrantAsk, GrantUse]] = []
    if others:
        if not consent:
            raise NotDataSubject("someone else")
        requester = requester_of(principal, None)
        for subject in others:
            refusal: GrantRefused | None = None
            for grant_id in consent:
                ask = GrantAsk(grant_id, subject, requester, SERVICE, "op", "p")
                try:
                    use = await book.use(ask)
                except GrantRefused as exc:
                    refusal = exc
                    continue
                if use.uses_left is not None:
                    spent.append((ask, use))
                if use.grant_id not in used:
                    used.append(use.grant_id)
                break
            else:
                assert refusal is not None
                for ask, use in spent:
                    await book.give_back(ask, use)
                raise refusal
    return Binding(
        tuple(n.subject for n in named), ",".join(used) or None, tuple(named), tuple(spent)
    )


async def _outcome(run: Any) -> tuple[str, Any]:
    try:
        binding = await run
    except GatewayError as exc:
        return "refused", exc.code
    return "bound", (binding.subjects, binding.grant, binding.named, len(binding.spent))


CONSENTS: tuple[tuple[str, ...], ...] = (
    (),
    ("g-holder",),
    ("g-other",),
    ("g-holder", "g-other"),
    ("g-ent",),
    ("g-other-sys",),
)
AUTHORITIES: tuple[frozenset[DataSubject] | None, ...] = (
    None,
    frozenset(),
    frozenset({KEYS.person(OTHER)}),
    frozenset({KEYS.enterprise(CREDIT)}),
)


async def test_a_case_authority_given_as_an_iterator_is_read_once() -> None:
    rule = SubjectRule(KEYS, _book())
    named = rule.named(TWO, DECLARATIONS["two"][1], None)
    binding = await rule.check(
        PRINCIPALS["holder"], TWO, named, consent=(), service=SERVICE, operation="op",
        purpose="p", authority=iter([KEYS.person(OTHER)]),
    )  # fmt: skip
    assert binding.subjects == (KEYS.person(HOLDER), KEYS.person(OTHER))
    assert binding.grant is None


@pytest.mark.parametrize("who", list(PRINCIPALS))
async def test_own_and_check_answer_as_the_rule_before_them(who: str) -> None:
    principal = PRINCIPALS[who]
    compared = 0
    for (name, (declaration, data)), consent, authority in itertools.product(
        DECLARATIONS.items(), CONSENTS, AUTHORITIES
    ):
        rule = SubjectRule(KEYS, _book())
        reference = _book()
        named = rule.named(declaration, data, None)
        args = (principal, declaration, named)
        got = await _outcome(
            rule.check(
                *args, consent=consent, service=SERVICE, operation="op", purpose="p",
                authority=authority,
            )
        )  # fmt: skip
        want = await _outcome(_reference_check(reference, *args, consent, authority))
        assert got == want, (who, name, consent, authority)
        book = rule.book
        assert isinstance(book, MemoryConsentBook)
        assert {g: t.uses for g, t in book.grants.items()} == {
            g: t.uses for g, t in reference.grants.items()
        }, (who, name, consent, authority)
        # own: the same binding whenever no grant is needed; otherwise "ask the book".
        if want[0] == "refused" and name == "caller":
            with pytest.raises(NotDataSubject):
                rule.own(*args, authority)
            continue
        own = rule.own(*args, authority)
        if own is None:
            assert name not in ("caller", "public")
            kind, key = ("enterprise", principal.enterprise) if principal.enterprise else (
                "person", principal.person if principal.level != MACHINE_LEVEL else None
            )  # fmt: skip
            assert any(
                (n.subject.kind, n.subject.key) != (kind, key)
                and (not authority or n.subject not in authority)
                for n in named
            ), (who, name, authority)
        else:
            assert (
                "bound",
                (own.subjects, own.grant, own.named, len(own.spent)),
            ) == await _outcome(_reference_check(_book(), *args, (), authority)), (
                who,
                name,
                authority,
            )
            assert own.grant is None
            assert own.spent == ()
        compared += 1
    assert compared > 100


async def test_the_holders_own_calls_never_answer_for_another_person() -> None:
    rule = SubjectRule(KEYS, _book())
    holder = PRINCIPALS["holder"]
    for _ in range(3):  # the holder's own calls first, many times
        named = rule.named(PERSON, {"holder_id": HOLDER}, None)
        bound = rule.own(holder, PERSON, named)
        assert bound is not None
        assert bound.subjects == (KEYS.person(HOLDER),)
    named = rule.named(PERSON, {"holder_id": OTHER}, None)
    assert rule.own(holder, PERSON, named) is None
    with pytest.raises(NotDataSubject):
        await rule.check(holder, PERSON, named, consent=(), service=SERVICE, operation="op",
                         purpose="p")  # fmt: skip
    # Another person's token naming the holder: refused too, the holder's key not reused.
    named = rule.named(PERSON, {"holder_id": HOLDER}, None)
    assert rule.own(PRINCIPALS["other"], PERSON, named) is None
    assert rule.own(PRINCIPALS["operator"], PERSON, named) is None
    assert rule.own(PRINCIPALS["machine"], PERSON, named) is None


def _value_by_text(data: Mapping[str, Any], path: str) -> str | None:
    """The walk by path text that the plan's walk replaced."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node if isinstance(node, str) and node.strip() else None


def _named_by_text(fields: Iterable[SubjectField], data: Mapping[str, Any]) -> list[Named]:
    named: list[Named] = []
    for entry in fields:
        value = _value_by_text(data, entry.path)
        if value is None:
            continue
        if entry.person is not None:
            id_type = (
                _value_by_text(data, entry.id_type) if entry.id_type else None
            ) or RESIDENT_ID_CARD
            named.append(Named(KEYS.person(value, id_type), id_type, value))
        else:
            named.append(Named(KEYS.enterprise(value), None, value))
    found: dict[DataSubject, Named] = {}
    for each in named:
        found.setdefault(each.subject, each)
    return list(found.values())


WALKED = (
    SubjectField(person="a.b.id_number", id_type="a.b.id_type"),
    SubjectField(person="holder_id", id_type="kind"),
    SubjectField(enterprise="org.credit_code"),
    SubjectField(person="c.id_number"),
)
DATA: list[Any] = [
    {},
    [],
    "text",
    {"a": {"b": {"id_number": HOLDER, "id_type": "414"}}},
    {"a": {"b": {"id_number": HOLDER, "id_type": " "}}},
    {"a": {"b": {"id_number": HOLDER, "id_type": 7}}},
    {"a": {"b": {"id_number": " "}}},
    {"a": {"b": {"id_number": 610102}}},
    {"a": {"b": [HOLDER]}},
    {"a": "b"},
    {"holder_id": OTHER, "kind": "111", "org": {"credit_code": CREDIT}},
    {"holder_id": OTHER, "org": {"credit_code": ""}, "c": {"id_number": OTHER}},
    {"holder_id": HOLDER, "c": {"id_number": HOLDER}, "a": {"b": {"id_number": OTHER}}},
    {"org": {"credit_code": CREDIT}, "c": None},
]


@pytest.mark.parametrize("data", DATA, ids=range(len(DATA)))
def test_the_walk_on_the_plan_names_whom_the_walk_by_text_named(data: Any) -> None:
    want = _named_by_text(WALKED, data)
    for fields in (WALKED, list(WALKED), iter(WALKED)):
        got = named_subjects(KEYS, fields, data)
        assert [(n.subject, n._id_type, n._identifier) for n in got] == [
            (n.subject, n._id_type, n._identifier) for n in want
        ]
    rule = SubjectRule(KEYS, _book())
    assert rule.named(WALKED, data, None) == want


@pytest.mark.parametrize("keys", [KEYS, None])
@pytest.mark.parametrize("name", ["holder", "two", "enterprise", "public"])
def test_the_province_subjects_and_their_text_as_before(
    name: str, keys: SubjectKeys | None
) -> None:
    declaration, data = DECLARATIONS[name]
    named = SubjectRule(KEYS, _book()).named(declaration, data, None)
    binding = Binding(tuple(n.subject for n in named), None, tuple(named), ())
    for province in ("61", "63", "61"):
        listed, text = binding.province_subjects(keys, province)
        afresh = [
            {
                "type": n.subject.kind,
                "hash": province_person_hash(
                    KEYS.province_key(province), n._id_type or RESIDENT_ID_CARD, n._identifier
                )
                if n.subject.kind == "person"
                else province_enterprise_hash(KEYS.province_key(province), n._identifier),
            }
            for n in named
        ] if keys is not None else []  # fmt: skip
        assert listed == afresh == binding.assertion_subjects(keys, province)
        assert text == (",".join([f"{s['type']}:{s['hash']}" for s in afresh]) or None)
        if keys is not None and named:
            assert len(listed) == len(named)
        else:
            assert (listed, text) == ([], None)

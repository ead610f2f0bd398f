"""Whose data a request touches (its *data subject*), and the rule that binds it to the caller.

Every operation (and every linked case) declares its data subject in its service file:

- ``subject: caller``: the data is the caller's own and no field names anyone (a status query
  by application number, say: the handling province checks it is the caller's);
- ``subject: public``: no one's personal data (public credit records);
- a list of the input fields naming the person(s) or enterprise(s) the data is about::

      subject:
        - person: id_number        # an ID number; a resident ID card unless id_type names
          id_type: id_type         #   the field holding the national ID-type code
        - enterprise: credit_code  # a credit code or a 15-digit registration number

  Several entries name co-applicants; paths walk into objects with dots (``buyer.id_number``).

The rule (``SubjectRule.bind``), before any back-end call or case: each named subject must be
the principal (a natural person or a Counter token: its person key; a legal person's operator:
the enterprise's key; gateway/identity/subject_keys.py), or a grant the request presents
(``consent``) must cover it, which only the consent book decides. Otherwise
``client.not_data_subject``. The binding names every subject by its key for the audit record
(``extra.subjects``, ``extra.grant``) and by the hash agreed with the handling province for
its identity assertion. It also carries every counted use it spent (``spent``): when the request
is then not sent (a later subject refused here, or the routed call failed before it reached the
back-end), the rule gives them back to the book (``give_back``), so a single-use grant is spent
only by a request that may have been handled.

Must not: import aiohttp; keep, log or return an identifier in clear.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.consent.contract import (
    ConsentBook,
    DataSubject,
    GrantAsk,
    GrantRefused,
    GrantUse,
    Requester,
    SubjectKind,
    give_back_each,
)
from gateway.consent.subjects import requester_person
from gateway.errors import NotDataSubject, SubjectFieldAmbiguous
from gateway.frozen import made_in_one_step
from gateway.identity.identifiers import RESIDENT_ID_CARD, KeyedSha256
from gateway.identity.subject_keys import (
    KnownPerson,
    SubjectKeys,
    province_enterprise_hash,
    province_person_hash,
)
from gateway.principal import Principal
from gateway.subject_config import SubjectDeclaration, SubjectField

__all__ = [
    "Binding",
    "RefusingConsentBook",
    "SubjectDeclaration",
    "SubjectField",
    "SubjectRule",
    "principal_subject",
]

MACHINE_LEVEL: Final = "system"
"""Principal.level of a client-credentials token (no person, no identity level)."""
MAX_GRANTS: Final = 8
"""Most grant ids one request may present (one per co-applicant who is not the caller)."""


# --- finding the subjects of a request ---------------------------------------------------------


_NOT_SPELLING = re.compile(r"[^0-9a-z]")


def _spelling(name: str) -> str:
    return _NOT_SPELLING.sub("", name.lower())


def _duplicate_keys(raw: bytes) -> set[str]:
    """Keys that appear twice in one object of the JSON text ``raw``."""
    twice: set[str] = set()

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        twice.update(k for k in names if names.count(k) > 1)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:
        return set()
    return twice


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    """One subject path of a declaration, split once: the objects to walk into, the last
    name, and how that name is spelled without case or separators."""

    parents: tuple[str, ...]
    name: str
    spelling: str


@dataclass(frozen=True, slots=True)
class _NamingPlan:
    """One entry of a declaration, for the naming walk (``named_subjects``): the path of its
    field split into names, whether it names a person, and the path of the ID type split."""

    parts: tuple[str, ...]
    person: bool
    id_type: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class _DeclarationPlan:
    """What ``check_unambiguous`` and ``named_subjects`` work out from a declaration alone
    (its paths, the byte strings to count in the raw body, each entry's split paths), worked
    out once per declaration."""

    names: frozenset[str]
    quoted: tuple[bytes, ...]
    paths: tuple[_FieldPlan, ...]
    naming: tuple[_NamingPlan, ...]


_PLANS: dict[int, tuple[tuple[SubjectField, ...], _DeclarationPlan]] = {}
_MAX_PLANS: Final = 1024
"""Declarations come from the configuration (a handful per service); a reload brings new ones,
so the cache is dropped when it grows past this."""


def _declaration_plan(fields: Sequence[SubjectField]) -> _DeclarationPlan:
    """The plan of ``fields``. A declaration of the configuration (a tuple of frozen fields)
    keeps its plan, by its identity: the entry holds the tuple, so the identity cannot be
    reused while the entry exists. Any other sequence (a list built for one request) is
    planned each time."""
    if type(fields) is tuple:
        cached = _PLANS.get(id(fields))
        if cached is not None and cached[0] is fields:
            return cached[1]
    plan = _new_plan(fields)
    if type(fields) is tuple:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[id(fields)] = (fields, plan)
    return plan


def _new_plan(fields: Sequence[SubjectField]) -> _DeclarationPlan:
    paths = [p for f in fields for p in (f.path, f.id_type) if p]
    names = frozenset(p.rsplit(".", 1)[-1] for p in paths)
    return _DeclarationPlan(
        names=names,
        quoted=tuple(f'"{n}"'.encode() for n in names),
        paths=tuple(
            _FieldPlan(tuple(parts[:-1]), parts[-1], _spelling(parts[-1]))
            for parts in (p.split(".") for p in paths)
        ),
        naming=tuple(
            _NamingPlan(
                tuple(f.path.split(".")),
                f.person is not None,
                tuple(f.id_type.split(".")) if f.id_type else None,
            )
            for f in fields
        ),
    )


def _counted_twice(raw: bytes, quoted: tuple[bytes, ...]) -> bool:
    """``any(raw.count(q) > 1 for q in quoted)``, without a generator per request."""
    for name in quoted:  # noqa: SIM110 - see the docstring
        if raw.count(name) > 1:
            return True
    return False


def _is_mapping(node: Any) -> bool:
    """``isinstance(node, Mapping)``, a parsed JSON object (a dict) told without the ABC."""
    return type(node) is dict or isinstance(node, Mapping)


def check_unambiguous(
    fields: Sequence[SubjectField], data: Mapping[str, Any], raw: bytes | None
) -> None:
    """Refuse a request in which a subject field appears twice in its object (JSON allows it;
    parsers disagree about which one wins) or in a second spelling (``idNumber`` beside
    ``id_number``), so that the gateway and the back-end never read two different people."""
    _check_unambiguous(_declaration_plan(fields), data, raw)


def _check_unambiguous(plan: _DeclarationPlan, data: Mapping[str, Any], raw: bytes | None) -> None:
    """``check_unambiguous`` with the declaration's plan."""
    if raw is not None and (b"\\u" in raw or _counted_twice(raw, plan.quoted)):
        doubled = sorted(_duplicate_keys(raw) & plan.names)
        if doubled:
            raise SubjectFieldAmbiguous(
                f"The field {doubled[0]!r} appears twice in one object; send it once.",
                field=doubled[0],
            )
    for path in plan.paths:
        node: Any = data
        for part in path.parents:
            node = node.get(part) if _is_mapping(node) else None
        if type(node) is not dict and not isinstance(node, Mapping):  # not _is_mapping(node)
            continue
        name = path.name
        for key in node:
            if key != name and _spelling(str(key)) == path.spelling:
                raise SubjectFieldAmbiguous(
                    f"The field {name!r} is also sent as {key!r}; send one spelling only.",
                    field=name,
                )


def _value(data: Mapping[str, Any], parts: tuple[str, ...]) -> str | None:
    """The non-blank text at the path ``parts`` (a path's names) of ``data``, or None."""
    node: Any = data
    for part in parts:
        if type(node) is not dict and not isinstance(node, Mapping):  # not _is_mapping(node)
            return None
        node = node.get(part)
    return node if isinstance(node, str) and node.strip() else None


@made_in_one_step
@dataclass(frozen=True, repr=False)
class Named:
    """A subject a request names: its key, and how to hash it for a province (transient)."""

    subject: DataSubject
    _id_type: str | None
    _identifier: str
    _known: KnownPerson | None = field(default=None, compare=False)
    """The person (or the enterprise, a ``KnownEnterprise``) as the subject keys remember them:
    their province hashes made once."""

    def province_hash(self, key: bytes | KeyedSha256) -> str:
        known = self._known
        if known is not None and type(key) is KeyedSha256:
            return known.province_hash(key, self._id_type or RESIDENT_ID_CARD, self._identifier)
        if self.subject.kind == "person":
            return province_person_hash(key, self._id_type or RESIDENT_ID_CARD, self._identifier)
        return province_enterprise_hash(key, self._identifier)

    def __repr__(self) -> str:
        return f"Named({self.subject.kind}, {self.subject.key[:6]}…)"


def named_subjects(
    keys: SubjectKeys, fields: Iterable[SubjectField], data: Mapping[str, Any]
) -> list[Named]:
    """The subjects ``data`` names through ``fields`` (each once, in declaration order)."""
    if type(fields) is not tuple:  # a declaration of the configuration is a tuple: its plan kept
        fields = list(fields)
    return _named(keys, _declaration_plan(fields), data)


def _named(keys: SubjectKeys, plan: _DeclarationPlan, data: Mapping[str, Any]) -> list[Named]:
    """``named_subjects`` with the declaration's plan."""
    named: list[Named] = []
    for entry in plan.naming:
        value = _value(data, entry.parts)
        if value is None:
            continue  # the schema requires it; an optional co-applicant left out names no one
        if entry.person:
            id_type = (_value(data, entry.id_type) if entry.id_type else None) or RESIDENT_ID_CARD
            known = keys.known_person(value, id_type)
            named.append(Named(known.subject, id_type, value, known))
        else:
            known = keys.known_enterprise(value)
            named.append(Named(known.subject, None, value, known))
    if len(named) < 2:
        return named
    found: dict[DataSubject, Named] = {}
    for each in named:
        found.setdefault(each.subject, each)  # the first naming of a subject is kept
    return list(found.values())


def principal_subject(principal: Principal) -> DataSubject | None:
    """The principal as a data subject: a legal person's operator is its enterprise; a natural
    person (or the document a clerk checked) is its person key; a machine client is no one."""
    kind, key = _principal_key(principal)
    return DataSubject(kind, key) if kind is not None and key is not None else None


def _principal_key(principal: Principal) -> tuple[SubjectKind, str] | tuple[None, None]:
    """The kind and key of ``principal_subject``, without making the subject."""
    if principal.enterprise is not None:
        return "enterprise", principal.enterprise
    if principal.person is not None and principal.level != MACHINE_LEVEL:
        return "person", principal.person
    return None, None


def requester_of(principal: Principal, province: str | None = None) -> Requester:
    """Who presents a grant: the client, and the signed-in natural person behind it (an agent
    presenting a delegation; gateway/consent/subjects.py), or no one for a machine client."""
    return Requester(principal.client_id, person=requester_person(principal), province=province)


def grant_ids(value: Any) -> tuple[str, ...]:
    """The ``consent`` of an envelope (a grant id, or a list of them) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


# --- the rule ----------------------------------------------------------------------------------


@made_in_one_step
@dataclass(frozen=True)
class Binding:
    """Whose data a request touches, as verified: what the audit record and the assertion say."""

    subjects: tuple[DataSubject, ...] = ()
    grant: str | None = None
    """The grant(s) used, comma-separated in request order; None when none was needed."""
    named: tuple[Named, ...] = field(default=(), repr=False)
    spent: tuple[tuple[GrantAsk, GrantUse], ...] = field(default=(), repr=False)
    """Each counted use spent for this request (the ask and the book's answer), to be given
    back when the request is not sent after all."""

    def audit_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"subjects": [s.key for s in self.subjects]}
        if self.grant is not None:
            extra["grant"] = self.grant
        return extra

    def assertion_subjects(self, keys: SubjectKeys | None, province: str) -> list[dict[str, str]]:
        """Each named subject as ``{"type", "hash"}`` under the handling province's key."""
        return self.province_subjects(keys, province)[0]

    def province_subjects(
        self, keys: SubjectKeys | None, province: str
    ) -> tuple[list[dict[str, str]], str | None]:
        """``assertion_subjects``, and the same as one text for the call's context: each
        ``type:hash``, comma-separated (None when there is none), made in one pass."""
        named = self.named
        if keys is None or not named:
            return [], None
        mac = keys.province_mac(province)
        if len(named) == 1:
            one = named[0]
            kind = one.subject.kind
            known = one._known  # the remembered hash read here: ``province_hash``'s first step
            found = known.hashes.get(mac) if known is not None else None
            if found is None:
                found = one.province_hash(mac)
            return [{"type": kind, "hash": found}], kind + ":" + found
        listed: list[dict[str, str]] = []
        texts: list[str] = []
        for n in named:
            kind = n.subject.kind
            found = n.province_hash(mac)
            listed.append({"type": kind, "hash": found})
            texts.append(kind + ":" + found)
        return listed, ",".join(texts)


PUBLIC: Final = Binding()


class RefusingConsentBook:
    """A book that covers nothing (tools and benchmarks of the rule alone; the app asks the
    consent book its consent context opens). Own and public data go on; the rest is refused."""

    async def use(self, ask: GrantAsk) -> GrantUse:
        raise GrantRefused("No consent store is configured: no grant can be used.")

    async def give_back(self, ask: GrantAsk, use: GrantUse) -> None:
        return None  # it never hands out a use


class SubjectRule:
    """Binds a request to its data subjects; built once, with the consent book injected."""

    def __init__(self, keys: SubjectKeys | None, book: ConsentBook) -> None:
        self.keys = keys
        self.book = book

    def named(
        self, declaration: SubjectDeclaration, data: Mapping[str, Any], raw: bytes | None
    ) -> list[Named]:
        """The subjects a request names (none for ``caller`` and ``public``); refuses an
        ambiguous subject field, and a named subject this gateway cannot key."""
        if isinstance(declaration, str):
            return []
        cached = _PLANS.get(id(declaration))  # ``_declaration_plan``'s first step, in this frame
        plan = (
            cached[1]
            if cached is not None and cached[0] is declaration
            else _declaration_plan(declaration)
        )
        _check_unambiguous(plan, data, raw)
        if self.keys is None:
            raise NotDataSubject(
                "This gateway has no identity link secret, so it cannot tell whose data this"
                " is; nothing is sent."
            )
        return _named(self.keys, plan, data)

    async def check(
        self,
        principal: Principal,
        declaration: SubjectDeclaration,
        named: Sequence[Named],
        *,
        consent: Sequence[str],
        service: str,
        operation: str | None,
        purpose: str,
        requester_province: str | None = None,
        authority: Iterable[DataSubject] | None = None,
    ) -> Binding:
        """The verified binding, or a refusal (NotDataSubject, a GrantRefused from the book,
        ConsentStoreUnavailable). ``authority``: subjects an open case lets a department's
        system reach without a grant."""
        allowed = set(authority) if authority else None  # an iterator is read once
        own = self.own(principal, declaration, named, allowed)
        if own is not None:
            return own
        # Someone named is not the principal: only a presented grant can cover them.
        if not consent:
            raise NotDataSubject(
                "The request names someone other than the signed-in person or enterprise;"
                " present their consent or delegation grant in 'consent'."
            )
        own_kind, own_key = _principal_key(principal)
        others = [
            s
            for s in [n.subject for n in named]
            if (s.key != own_key or s.kind != own_kind) and (allowed is None or s not in allowed)
        ]
        used: list[str] = []
        spent: list[tuple[GrantAsk, GrantUse]] = []
        requester = requester_of(principal, requester_province)
        try:
            for subject in others:
                ask, use = await self._use(consent, subject, requester, service, operation, purpose)
                if use.uses_left is not None:
                    spent.append((ask, use))
                if use.grant_id not in used:
                    used.append(use.grant_id)
        except Exception:
            # One subject refused (or the book failed): the whole request is refused and
            # nothing is sent, so the uses already spent for the others are given back.
            await self.give_back(spent)
            raise
        return Binding(
            tuple([n.subject for n in named]),
            ",".join(used) if used else None,
            tuple(named),
            tuple(spent),
        )

    def own(
        self,
        principal: Principal,
        declaration: SubjectDeclaration,
        named: Sequence[Named],
        authority: Iterable[DataSubject] | None = None,
    ) -> Binding | None:
        """The binding when no grant is needed (public data, the caller's own, every named
        subject the principal or within ``authority``); None when some named subject is someone
        else, whom only a grant presented to the book can cover (``check`` asks it). Refuses
        ``caller`` data for a client acting for itself. Synchronous: a call on its caller's own
        data goes without a coroutine."""
        if type(declaration) is not tuple:
            if declaration == "public":
                return PUBLIC
            if declaration == "caller":
                if principal.level == MACHINE_LEVEL:
                    raise NotDataSubject(
                        "This operation reads the caller's own data; a client acting for itself"
                        " has none."
                    )
                # A token without a person key (issued before them) is still its owner's.
                subject = principal_subject(principal)
                return Binding((subject or DataSubject("person", principal.owner),))
        # Whom the principal is, compared by kind and key (what DataSubject's == compares),
        # without making a DataSubject of the principal on every call (``_principal_key``, in
        # this frame).
        own_kind: SubjectKind | None
        own_key: str | None
        if principal.enterprise is not None:
            own_kind, own_key = "enterprise", principal.enterprise
        elif principal.person is not None and principal.level != MACHINE_LEVEL:
            own_kind, own_key = "person", principal.person
        else:
            own_kind = own_key = None
        allowed = set(authority) if authority else None
        if len(named) == 1:  # the usual call: one subject, without the list and the loop
            s = named[0].subject
            if (s.key != own_key or s.kind != own_kind) and (allowed is None or s not in allowed):
                return None
            return Binding((s,), None, (named[0],), ())
        subjects = tuple([n.subject for n in named])
        for s in subjects:
            if (s.key != own_key or s.kind != own_kind) and (allowed is None or s not in allowed):
                return None
        return Binding(subjects, None, tuple(named), ())

    async def give_back(self, spent: Iterable[tuple[GrantAsk, GrantUse]]) -> None:
        """Give the book back each counted use spent for a request that was then not sent
        (``give_back_each``: never raises)."""
        await give_back_each(self.book, spent)

    async def bind(
        self,
        principal: Principal,
        declaration: SubjectDeclaration,
        data: Mapping[str, Any],
        *,
        raw: bytes | None,
        consent: Sequence[str],
        service: str,
        operation: str | None,
        purpose: str,
        requester_province: str | None = None,
    ) -> Binding:
        """``named`` then ``check``: the binding of one request, or its refusal."""
        named = self.named(declaration, data, raw)
        return await self.check(
            principal,
            declaration,
            named,
            consent=consent,
            service=service,
            operation=operation,
            purpose=purpose,
            requester_province=requester_province,
        )

    async def _use(
        self,
        consent: Sequence[str],
        subject: DataSubject,
        requester: Requester,
        service: str,
        operation: str | None,
        purpose: str,
    ) -> tuple[GrantAsk, GrantUse]:
        """The first presented grant that covers ``subject`` (the ask and the book's use); the
        last refusal otherwise."""
        refusal: GrantRefused | None = None
        for grant_id in consent:
            ask = GrantAsk(grant_id, subject, requester, service, operation, purpose)
            try:
                return ask, await self.book.use(ask)
            except GrantRefused as exc:
                refusal = exc
        assert refusal is not None
        raise refusal


def case_declaration(service: Any, operations: Sequence[str]) -> SubjectDeclaration | None:
    """Whose data an application is about: a linked service's ``linked.subject``, else the
    subjects its parts' operations declare, together (None when one declares nothing)."""
    if service.linked is not None:
        declared: SubjectDeclaration | None = service.linked.subject
        return declared
    kinds: list[SubjectDeclaration] = []
    for operation in operations:
        found = service.subject_of(operation)
        if found is None:
            return None
        kinds.append(found)
    fields: list[SubjectField] = []
    for kind in kinds:
        if not isinstance(kind, str):
            fields += [f for f in kind if f not in fields]
    if fields:
        return tuple(fields)
    return "caller" if "caller" in kinds else "public"


def service_subject_fields(service: Any) -> list[SubjectField]:
    """Every field any operation (or the linked application) of ``service`` names a subject by:
    what an application is checked for ambiguous spellings before its schema is."""
    declared = [service.case_subject, service.subject] + [
        op.subject for op in service.operations.values()
    ]
    fields: list[SubjectField] = []
    for declaration in declared:
        if isinstance(declaration, tuple):
            fields += [f for f in declaration if f not in fields]
    return fields

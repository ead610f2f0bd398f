"""The ``subject:`` declaration of a service file (the rule itself is gateway/subjects.py).

Imports nothing of the gateway: the settings and the case configuration import this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class SubjectField(BaseModel):
    """One input field naming a data subject: a person's ID number or an enterprise's code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    person: str | None = None
    """Path of the field holding a person's ID number."""
    id_type: str | None = None
    """Path of the field holding that person's national ID-type code (111 when absent)."""
    enterprise: str | None = None
    """Path of the field holding an enterprise's credit code or registration number."""

    @model_validator(mode="after")
    def _one_kind(self) -> SubjectField:
        if (self.person is None) == (self.enterprise is None):
            raise ValueError("name exactly one of 'person' (an ID number) or 'enterprise'")
        if self.id_type is not None and self.person is None:
            raise ValueError("'id_type' goes with 'person'")
        return self

    @property
    def path(self) -> str:
        found = self.person or self.enterprise
        assert found is not None
        return found


SubjectDeclaration = Literal["caller", "public"] | tuple[SubjectField, ...]


# --- configuration checks ----------------------------------------------------------------------

_ID_NAME = re.compile(
    r"(^|_)(id_?number|id_?card(_?no)?|credit_?code|registration_?number|uscc)$", re.IGNORECASE
)
_ID_PATTERNS = ("{17}[0-9X]", "0-9A-HJ-NPQRTUWXY")


def identifier_fields(schema: Any, prefix: str = "") -> list[str]:
    """Paths of the fields of ``schema`` that hold an ID number or an enterprise code, by name
    (``id_number``, ``buyer_id_number``, ``credit_code`` ...) or by pattern."""
    found: list[str] = []
    if not isinstance(schema, Mapping):
        return found
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return found
    for name, sub in properties.items():
        path = f"{prefix}{name}"
        pattern = sub.get("pattern", "") if isinstance(sub, Mapping) else ""
        if _ID_NAME.search(str(name)) or any(p in str(pattern) for p in _ID_PATTERNS):
            found.append(path)
        found += identifier_fields(sub, f"{path}.")
    return found


def _field_problem(schema: Any, path: str) -> str | None:
    """Why ``path`` is not a required string field of ``schema``, or None."""
    node: Any = schema
    for part in path.split("."):
        properties = node.get("properties") if isinstance(node, Mapping) else None
        if not isinstance(properties, Mapping) or part not in properties:
            return f"{path!r} is not a field of the input schema"
        required = node.get("required", [])
        if part not in required:
            return f"{path!r} must be required by the input schema (a request could leave it out)"
        node = properties[part]
    if isinstance(node, Mapping) and node.get("type") not in (None, "string"):
        return f"{path!r} must be a string field"
    return None


def declaration_problems(declaration: SubjectDeclaration | None, schema: Any) -> list[str]:
    """What ``config check`` says about one declaration against its input schema."""
    if declaration is None:
        return [
            "subject: required, missing: declare whose data this is (caller, public, or the"
            " fields naming the person or enterprise)"
        ]
    if declaration in ("caller", "public"):
        named = identifier_fields(schema)
        if named:
            return [
                f"subject: {declaration!r}, but the input schema names someone by"
                f" {', '.join(repr(n) for n in named)}: declare those fields as the subject"
            ]
        return []
    assert not isinstance(declaration, str)
    if not declaration:
        return ["subject: an empty list names no one; use caller or public"]
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(declaration):
        paths = [entry.path] + ([entry.id_type] if entry.id_type else [])
        for path in paths:
            problem = _field_problem(schema, path)
            if problem is not None:
                problems.append(f"subject[{index}]: {problem}")
        if entry.path in seen:
            problems.append(f"subject[{index}]: {entry.path!r} is declared twice")
        seen.add(entry.path)
    return problems


_GRANT_ID: Final = {"type": "string", "minLength": 1, "maxLength": 128}
CONSENT: Final[dict[str, Any]] = {
    "description": "The consent (授权用证) or delegation (委托用证) grant that lets the caller"
    " reach the data of a subject who is not the signed-in person or enterprise; a list when"
    " several co-applicants each granted one.",
    # One schema without anyOf (the call path's quick check, gateway/fastschema.py): the
    # string keywords bind a string, the array keywords a list.
    "type": ["string", "array"],
    "minLength": 1,
    "maxLength": 128,
    "minItems": 1,
    "maxItems": 8,
    "items": _GRANT_ID,
}

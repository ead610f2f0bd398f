"""Configuration problems as people can act on them: where, what, and the key they meant.

``validation_problems`` turns a pydantic ``ValidationError`` into (location, message) pairs, one
per error, and answers an unknown key with the nearest known one at that place ("did you mean
`timeouts`?") by walking the model's fields along the error's location. ``nearest`` is the same
suggestion for names checked elsewhere (operations in a WSDL, columns of a mapping).
``schema_problems`` lists every problem of a JSON Schema with its JSON Pointer inside the schema.

Used by the settings loader and, through ``gateway.adapter``, by the adapters for their own
blocks. Must not: echo a value (it may be a secret written inline by mistake).
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import orjson
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

__all__ = ["nearest", "pointer", "schema_problems", "suggestion", "validation_problems"]

_UNION_TYPES = (Union, types.UnionType)


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (a typo, a missing 's', another case), or None."""
    candidates = [str(k) for k in known]
    by_case = {c.lower(): c for c in candidates}
    if name.lower() in by_case:
        return by_case[name.lower()]
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(name: str, known: Iterable[str]) -> str:
    """'; did you mean `x`?' when a known name is near ``name``, else the known names."""
    known = sorted(str(k) for k in known)
    close = nearest(name, known)
    if close is not None:
        return f"; did you mean `{close}`?"
    if known and len(known) <= 12:
        return f"; known: {', '.join(known)}"
    return ""


def validation_problems(
    model: Any, exc: ValidationError, prefix: Sequence[str | int] = ()
) -> list[tuple[str, str]]:
    """Every error of ``exc`` as (dotted location, message), located under ``prefix``.

    ``model`` is what was validated (a pydantic model class or a type such as a union); it is
    walked along each location to suggest the key meant for an unknown one."""
    problems: list[tuple[str, str]] = []
    for err in _meant_branches(exc.errors()):
        loc = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            known = _known_keys(model, loc[:-1])
            message = "unknown key" + (suggestion(str(loc[-1]), known) if known else "")
        elif err["type"] == "missing" and loc:
            message = "required, missing"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        location = ".".join(str(p) for p in (*prefix, *_readable(model, loc))) or "(entry)"
        problems.append((location, message))
    return problems


_TYPE_TAG = re.compile(r"^(literal|tuple|list|dict|set|frozenset|str|int|bool)\[")


def _tag_at(loc: Sequence[Any]) -> int | None:
    for index, part in enumerate(loc):
        if isinstance(part, str) and _TYPE_TAG.match(part):
            return index
    return None


def _meant_branches(errors: Sequence[Any]) -> list[Any]:
    """The errors without pydantic's type tags (``literal[...]``, ``tuple[...]``: no key anyone
    wrote) and, of a union of words and other shapes, the branch meant: the words' error for a
    string, the other branches' for anything else."""
    branches: dict[tuple[Any, ...], set[str]] = {}
    for err in errors:
        at = _tag_at(err["loc"])
        if at is not None:
            branches.setdefault(tuple(err["loc"][:at]), set()).add(err["type"])
    kept: list[Any] = []
    for err in errors:
        loc = tuple(err["loc"])
        at = _tag_at(loc)
        if at is None:
            kept.append(err)
            continue
        kinds = branches[loc[:at]]
        if "literal_error" in kinds and len(kinds) > 1:
            meant_words = isinstance(err.get("input"), str)
            if (err["type"] == "literal_error") != meant_words:
                continue
        kept.append({**err, "loc": loc[:at] + loc[at + 1 :]})
    return kept


def _walk(model: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """(the location without pydantic's union branch names (``function-after[...]``, a model's
    class name or a tag: not keys anyone wrote), the annotation reached or None)."""
    out: list[Any] = []
    current: Any = model
    for part in loc:
        branch = _union_branch(current, part)
        if branch is not None:
            current = branch
            continue
        out.append(part)
        current = _step(current, part) if current is not None else None
    return tuple(out), current


def _readable(model: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return _walk(model, loc)[0]


def _strip(annotation: Any) -> Any:
    """``Annotated[T, ...]`` → ``T``; ``T | None`` → ``T``."""
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in _UNION_TYPES:
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _models(annotation: Any) -> list[type[BaseModel]]:
    annotation = _strip(annotation)
    if get_origin(annotation) in _UNION_TYPES:
        found: list[type[BaseModel]] = []
        for arg in get_args(annotation):
            found += _models(arg)
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        root = annotation.model_fields.get("root")
        if root is not None and getattr(annotation, "__pydantic_root_model__", False):
            return _models(root.annotation)
        return [annotation]
    return []


def _tag(model: type[BaseModel]) -> set[str]:
    """The literal values of a model's ``kind`` / ``type`` field (a discriminated union's tag)."""
    tags: set[str] = set()
    for name in ("kind", "type"):
        field = model.model_fields.get(name)
        if field is not None and get_origin(field.annotation) is Literal:
            tags |= {str(v) for v in get_args(field.annotation)}
    return tags


def _union_branch(annotation: Any, part: Any) -> Any:
    """The branch of a union that pydantic named in the location, or None."""
    models = _models(annotation)
    if len(models) < 2 or not isinstance(part, str):
        return None
    for model in models:
        if part == model.__name__ or part in _tag(model):
            return model
    if part.startswith(("function-", "tagged-union[", "union[")):
        return annotation
    return None


def _step(annotation: Any, part: Any) -> Any:
    annotation = _strip(annotation)
    models = _models(annotation)
    if len(models) == 1:
        field = models[0].model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple, Sequence) and args:
        return args[0]
    return None


def _known_keys(model: Any, parent: tuple[Any, ...]) -> set[str] | None:
    models = _models(_walk(model, parent)[1])
    if not models:
        return None
    return {field.alias or name for found in models for name, field in found.model_fields.items()}


def pointer(parts: Iterable[Any]) -> str:
    """A JSON Pointer (RFC 6901) of ``parts``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts) or "/"


_JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
_KEYWORDS = frozenset(Draft202012Validator.VALIDATORS) | {
    "$schema", "$id", "$defs", "$comment", "$anchor", "$dynamicAnchor", "title",
    "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "contentEncoding", "contentMediaType", "contentSchema", "definitions", "format",
}  # fmt: skip
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMAS = (
    "items", "not", "if", "then", "else", "additionalProperties", "contains", "propertyNames",
    "unevaluatedItems", "unevaluatedProperties", "contentSchema",
)  # fmt: skip


def schema_problems(schema: Any) -> list[str]:
    """Every problem of a JSON Schema (2020-12) as 'at <pointer>: <message>', the pointer into
    the schema as written; a key that is no keyword but close to one is a problem too (JSON
    Schema ignores unknown keywords, so ``requried`` would silently require nothing)."""
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:  # not JSON data: the meta-schema says what is wrong
        return _schema_problems(schema)
    return list(_known_schema_problems(key))


@functools.lru_cache(maxsize=1024)
def _known_schema_problems(schema_json: bytes) -> tuple[str, ...]:
    """Checking against the meta-schema takes milliseconds a schema; every start, reload and
    `config check` of one configuration meets the same schemas."""
    return tuple(_schema_problems(orjson.loads(schema_json)))


def _schema_problems(schema: Any) -> list[str]:
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    problems = [
        (list(map(str, error.absolute_path)), _schema_message(error))
        for error in meta.iter_errors(schema)
    ]
    problems += _near_keywords(schema, [])
    problems.sort(key=lambda p: p[0])
    return [f"at {pointer(path)}: {message}" for path, message in problems]


def _schema_message(error: Any) -> str:
    path = list(error.absolute_path)
    if path and path[-1] == "type" and isinstance(error.instance, str):
        close = nearest(error.instance, _JSON_TYPES)
        hint = f"; did you mean `{close}`?" if close else f" ({', '.join(_JSON_TYPES)})"
        return f"{error.instance!r} is not a JSON Schema type{hint}"
    if error.validator == "type":
        expected = error.validator_value
        return f"must be of type {expected if isinstance(expected, str) else ' or '.join(expected)}"
    return str(error.message)[:200]


def _near_keywords(schema: Any, path: list[str]) -> list[tuple[list[str], str]]:
    if not isinstance(schema, Mapping):
        return []
    found: list[tuple[list[str], str]] = []
    for raw_key, value in schema.items():
        key = str(raw_key)
        if key not in _KEYWORDS:
            close = difflib.get_close_matches(key, sorted(_KEYWORDS), n=1, cutoff=0.8)
            if close:
                found.append(
                    ([*path, key], f"not a JSON Schema keyword; did you mean `{close[0]}`?")
                )
            continue
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            for name, sub in value.items():
                found += _near_keywords(sub, [*path, key, str(name)])
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                found += _near_keywords(sub, [*path, key, str(index)])
        elif key in _SCHEMAS:
            found += _near_keywords(value, [*path, key])
    return found

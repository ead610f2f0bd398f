"""Declarative field mapping between the canonical JSON of a call and a system's own payload.

A mapping is a dict from a target path to a source: ``"holder.idNo": "id_number"`` copies a
value; ``{"const": "01"}`` writes a constant; ``{"from": "a.b", "default": x}`` copies with a
fallback; ``{"from": "a.b", "as": "string"}`` converts; ``{"from": "Table", "each": {...}}``
maps every item of an array (a DataSet's rows, say) with a mapping of its own, one object
becoming one item; ``{env: NAME}`` / ``{file: PATH}`` writes a secret from the environment or a
file (the gateway's own account at a system, inside the body), never written in the
configuration. Paths are dotted; a segment that is a number indexes a list. An absent mapping
passes the payload through unchanged. Mappings are compiled once at start-up, so a typo fails
there and not on a citizen's request.

Must not: show a secret's value (``repr`` of a rule shows the reference kind only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.adapter import Secret, Shape, suggestion
from gateway.secrets import is_secret_ref, read_secret_ref

_MISSING: Any = object()
_CONVERSIONS: Mapping[str, Callable[[Any], Any]] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": lambda v: v if isinstance(v, bool) else str(v).lower() in {"1", "true", "yes", "y"},
}
_KEYS = frozenset({"const", "from", "default", "as", "each"})


class MappingError(ValueError):
    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


def _split(path: str, where: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not path or any(not p for p in parts):
        raise MappingError(where, f"{path!r} is not a dotted path")
    return parts


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        # A plain dict (parsed JSON: nearly every step) skips the abstract class's check.
        if type(data) is dict or isinstance(data, Mapping):
            data = data.get(part, _MISSING)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
        if data is _MISSING:
            return _MISSING
    return data


def _put(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = out
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


@dataclass(frozen=True, slots=True)
class _Rule:
    target: tuple[str, ...]
    source: tuple[str, ...] | None
    const: Any
    default: Any
    convert: Callable[[Any], Any] | None
    each: FieldMapping | None = None
    secret: Secret | None = field(default=None, repr=False)

    def value(self, data: Any) -> Any:
        if self.secret is not None:
            return self.secret.reveal()
        if self.source is None:
            return self.const
        value = _get(data, self.source)
        if value is _MISSING or value is None:
            return self.default
        if self.each is not None:
            items = value if isinstance(value, list) else [value]
            return [self.each.apply(item) for item in items]
        return self.convert(value) if self.convert else value


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """A compiled mapping; ``apply`` builds a fresh dict and never mutates its input."""

    rules: tuple[_Rule, ...]
    _applied: Callable[[Any], Any] = field(init=False, repr=False, compare=False)
    """The rules as one function of straight-line Python (``_straight``), made once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_applied", _straight(self.rules))

    def apply(self, data: Any) -> Any:
        return self._applied(data)

    def apply_rule_by_rule(self, data: Any) -> Any:
        """What ``apply`` gives, worked out rule by rule (``_Rule.value``, ``_put``): the
        definition the straight-line function follows."""
        if not self.rules:
            return data
        out: dict[str, Any] = {}
        for rule in self.rules:
            value = rule.value(data)
            if value is not _MISSING:
                _put(out, rule.target, value)
        return out

    def paths(
        self,
    ) -> Iterator[tuple[tuple[str, ...], tuple[str, ...] | None, FieldMapping | None]]:
        """(target, source or None, the per-item mapping or None) of every rule: what a
        contract check compares with the system's message shapes."""
        for rule in self.rules:
            yield rule.target, rule.source, rule.each


def _passed(data: Any) -> Any:
    return data


def _straight(rules: tuple[_Rule, ...]) -> Callable[[Any], Any]:
    """``FieldMapping.apply_rule_by_rule`` for ``rules``, as one generated function: a routed
    call maps its request and its answer, and rule by rule that is three calls per field
    (``_Rule.value``, ``_get``, ``_put``). The same steps in the same order: each source path
    followed a part at a time (a plain dict by ``dict.get``, anything else by ``_get``, which
    gives ``_MISSING`` for what it cannot follow, ``_MISSING`` itself included), an absent or
    null value replaced by the default, the items mapped or the value converted, and what is
    not ``_MISSING`` put at its target. The source holds no text of the configuration: every
    path part, constant, default, conversion and secret is a name bound to its value."""
    if not rules:
        return _passed
    names: dict[str, Any] = {"_MISSING": _MISSING, "_get": _get, "_put": _put}
    lines = ["def apply(data):", "    out = {}"]
    for i, rule in enumerate(rules):
        if rule.secret is not None:
            names[f"secret_{i}"] = rule.secret
            lines.append(f"    value = secret_{i}.reveal()")
        elif rule.source is None:
            names[f"const_{i}"] = rule.const
            lines.append(f"    value = const_{i}")
        else:
            lines.append("    value = data")
            for j, part in enumerate(rule.source):
                names[f"part_{i}_{j}"] = part
                names[f"path_{i}_{j}"] = (part,)
                lines.append(
                    f"    value = value.get(part_{i}_{j}, _MISSING) if type(value) is dict"
                    f" else _get(value, path_{i}_{j})"
                )
            names[f"default_{i}"] = rule.default
            lines.append("    if value is _MISSING or value is None:")
            lines.append(f"        value = default_{i}")
            if rule.each is not None:
                names[f"each_{i}"] = rule.each
                lines.append("    else:")
                lines.append(
                    f"        value = [each_{i}.apply(item)"
                    " for item in (value if isinstance(value, list) else [value])]"
                )
            elif rule.convert is not None:
                names[f"convert_{i}"] = rule.convert
                lines.append("    else:")
                lines.append(f"        value = convert_{i}(value)")
        lines.append("    if value is not _MISSING:")
        if len(rule.target) == 1:
            names[f"target_{i}"] = rule.target[0]
            lines.append(f"        out[target_{i}] = value")
        else:
            names[f"target_{i}"] = rule.target
            lines.append(f"        _put(out, target_{i}, value)")
    lines.append("    return out")
    exec("\n".join(lines), names)  # noqa: S102 - only names in the source, values bound to them
    applied: Callable[[Any], Any] = names["apply"]
    return applied


IDENTITY = FieldMapping(())


def compile_mapping(
    spec: Mapping[str, Any] | None, *, resolve_secrets: bool = True
) -> FieldMapping:
    """Compile a mapping block from configuration, or raise MappingError naming the entry.

    ``resolve_secrets=False`` checks a secret reference's shape without reading it."""
    if spec is None:
        return IDENTITY
    rules: list[_Rule] = []
    for target, source in spec.items():
        rules.append(_compile_rule(str(target), source, resolve_secrets))
    return FieldMapping(tuple(rules))


def _compile_rule(target: str, source: Any, resolve_secrets: bool) -> _Rule:
    target_path = _split(target, target)
    if isinstance(source, str):
        return _Rule(target_path, _split(source, target), None, _MISSING, None)
    if not isinstance(source, Mapping):
        raise MappingError(target, "expected a source path, {const|from: ...} or {env|file: ...}")
    if is_secret_ref(source):
        try:
            value = read_secret_ref(source, resolve=resolve_secrets)
        except ValueError as exc:
            raise MappingError(target, str(exc)) from None
        return _Rule(target_path, None, None, _MISSING, None, secret=Secret(value))
    unknown = set(source) - _KEYS
    if unknown:
        raise MappingError(target, f"unknown keys {sorted(unknown)}")
    if "const" in source:
        if set(source) != {"const"}:
            raise MappingError(target, "'const' stands alone")
        return _Rule(target_path, None, source["const"], _MISSING, None)
    if "from" not in source:
        raise MappingError(target, "needs 'from' or 'const'")
    convert = None
    if "as" in source:
        if source["as"] not in _CONVERSIONS:
            raise MappingError(target, f"'as' must be one of {sorted(_CONVERSIONS)}")
        convert = _CONVERSIONS[source["as"]]
    each = None
    if "each" in source:
        if convert is not None:
            raise MappingError(target, "'each' maps items; 'as' converts one value: pick one")
        if not isinstance(source["each"], Mapping) or not source["each"]:
            raise MappingError(target, "'each' needs a mapping for every item")
        try:
            each = compile_mapping(source["each"], resolve_secrets=resolve_secrets)
        except MappingError as exc:
            raise MappingError(f"{target}.each.{exc.field}", exc.message) from None
    return _Rule(
        target_path,
        _split(str(source["from"]), target),
        None,
        source.get("default", _MISSING),
        convert,
        each,
    )


# --- checked against a system's contract (config check, start-up) ----------------------------


def _walk(shape: Shape, path: tuple[str, ...], what: str) -> tuple[Shape | None, str | None]:
    """Follow ``path`` in ``shape``: (the shape reached, or None when open content was reached;
    why the path cannot exist, or None)."""
    for index, part in enumerate(path):
        walked = ".".join(path[:index]) or what
        if shape.repeated:
            if part.isdigit():
                shape = Shape(shape.fields, shape.open)
                continue
            return None, (
                f"{walked!r} is an array: index it ({walked}.0.{part}) or map its items with 'each'"
            )
        if shape.fields is None:
            return None, f"{walked!r} is a value; it has no field {part!r}"
        if part in shape.fields:
            shape = shape.fields[part]
            continue
        if shape.open:
            return None, None
        place = f"in {walked!r}" if index else f"in {what}"
        return None, f"no field {part!r} {place}{suggestion(part, shape.fields)}"
    return shape, None


def _items(shape: Shape | None) -> Shape | None:
    if shape is None or (shape.open and not shape.fields):
        return None
    return Shape(shape.fields, shape.open)


def _problems(
    mapping: FieldMapping, shape: Shape, operation: str, side: str, prefix: str
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for target, source, each in mapping.paths():
        where = f"{prefix}.{'.'.join(target)}"
        if side == "request":
            path, what, lead = target, f"the request of {operation}", ""
        elif source is not None:
            path, what, lead = source, f"the answer of {operation}", f"from {'.'.join(source)!r}: "
        else:
            continue  # a constant or a secret: nothing to find in the answer
        reached, why = _walk(shape, path, what)
        if why is not None:
            found.append((where, lead + why))
        elif each is not None and (items := _items(reached)) is not None:
            found += _problems(each, items, operation, side, f"{where}.each")
    return found


def request_problems(mapping: FieldMapping, shape: Shape, operation: str) -> list[tuple[str, str]]:
    """Targets of a request mapping the request of ``operation`` has no place for."""
    return _problems(mapping, shape, operation, "request", "")


def response_problems(mapping: FieldMapping, shape: Shape, operation: str) -> list[tuple[str, str]]:
    """Sources of a response mapping the answer of ``operation`` cannot hold: a typo there
    would give an empty field on every call."""
    return _problems(mapping, shape, operation, "response", "")


def passthrough_problems(
    schema: Mapping[str, Any] | None, shape: Shape, operation: str
) -> list[tuple[str, str]]:
    """With no request mapping the call's data goes as it is: its fields must be the request's."""
    properties = (schema or {}).get("properties")
    if not isinstance(properties, Mapping) or shape.fields is None or shape.open:
        return []
    return [
        (
            "",
            f"absent, so the call's data goes unchanged, but the request of {operation} has no"
            f" field {name!r}{suggestion(str(name), shape.fields)}",
        )
        for name in properties
        if name not in shape.fields
    ]

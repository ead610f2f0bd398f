"""Declarative field mapping between the canonical JSON of a call and a system's own payload.

A mapping is a dict from a target path to a source: ``"holder.idNo": "id_number"`` copies a
value; ``{"const": "01"}`` writes a constant; ``{"from": "a.b", "default": x}`` copies with a
fallback; ``{"from": "a.b", "as": "string"}`` converts. Paths are dotted; a segment that is a
number indexes a list. An absent mapping passes the payload through unchanged. Mappings are
compiled once at start-up, so a typo fails there and not on a citizen's request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_MISSING: Any = object()
_CONVERSIONS: Mapping[str, Callable[[Any], Any]] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": lambda v: v if isinstance(v, bool) else str(v).lower() in {"1", "true", "yes", "y"},
}


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
        if isinstance(data, Mapping):
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

    def value(self, data: Any) -> Any:
        if self.source is None:
            return self.const
        value = _get(data, self.source)
        if value is _MISSING or value is None:
            return self.default
        return self.convert(value) if self.convert else value


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """A compiled mapping; ``apply`` builds a fresh dict and never mutates its input."""

    rules: tuple[_Rule, ...]

    def apply(self, data: Any) -> Any:
        if not self.rules:
            return data
        out: dict[str, Any] = {}
        for rule in self.rules:
            value = rule.value(data)
            if value is not _MISSING:
                _put(out, rule.target, value)
        return out


IDENTITY = FieldMapping(())


def compile_mapping(spec: Mapping[str, Any] | None) -> FieldMapping:
    """Compile a mapping block from configuration, or raise MappingError naming the entry."""
    if spec is None:
        return IDENTITY
    rules: list[_Rule] = []
    for target, source in spec.items():
        target_path = _split(str(target), str(target))
        if isinstance(source, str):
            rules.append(_Rule(target_path, _split(source, str(target)), None, _MISSING, None))
            continue
        if not isinstance(source, Mapping):
            raise MappingError(str(target), "expected a source path or {const|from: ...}")
        unknown = set(source) - {"const", "from", "default", "as"}
        if unknown:
            raise MappingError(str(target), f"unknown keys {sorted(unknown)}")
        if "const" in source:
            if set(source) != {"const"}:
                raise MappingError(str(target), "'const' stands alone")
            rules.append(_Rule(target_path, None, source["const"], _MISSING, None))
            continue
        if "from" not in source:
            raise MappingError(str(target), "needs 'from' or 'const'")
        convert = None
        if "as" in source:
            if source["as"] not in _CONVERSIONS:
                raise MappingError(str(target), f"'as' must be one of {sorted(_CONVERSIONS)}")
            convert = _CONVERSIONS[source["as"]]
        rules.append(
            _Rule(
                target_path,
                _split(str(source["from"]), str(target)),
                None,
                source.get("default", _MISSING),
                convert,
            )
        )
    return FieldMapping(tuple(rules))

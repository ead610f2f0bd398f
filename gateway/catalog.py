"""The service catalogue (事项目录): service × receiving × handling province → one route.

Built once at start-up (and again on every configuration reload) from the validated settings
and the open systems; answers lookups without I/O. A route knows how to validate, map, call and
map back, and carries what the call handler would otherwise work out from the service's settings
on every call (the admitted levels, the declared data subject); nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation

from gateway.adapter import Call, CallContext
from gateway.errors import NoAgreement, UnknownOperation, UnknownService, ValidationFailed
from gateway.fastschema import SchemaGate
from gateway.frozen import made_in_one_step
from gateway.mapping import FieldMapping, compile_mapping
from gateway.pipeline import CallTrace, Next
from gateway.settings import Operation, RouteSettings, ServiceSettings, Settings
from gateway.subject_config import SubjectDeclaration


def _safe_message(error: SchemaViolation) -> str:
    # jsonschema messages quote the offending value, which may be an ID number: name the rule.
    if error.validator in {"required", "additionalProperties"}:
        return error.message
    return f"does not satisfy '{error.validator}': {error.validator_value!r}"[:200]


@made_in_one_step
@dataclass(frozen=True)
class CallResult:
    data: Any
    trace: CallTrace
    request_digest: str | None
    response_digest: str | None


@dataclass(frozen=True, slots=True)
class Route:
    service_code: str
    operation_name: str
    service: ServiceSettings
    operation: Operation
    handling: str
    system: str
    system_operation: str
    request_map: FieldMapping
    response_map: FieldMapping
    validator: SchemaGate
    stack: Next
    licence_data: bool = False
    """The agreement lets licence data travel with cases on this route (免证办)."""
    levels: frozenset[str] = frozenset()
    """The identity levels admitted to the operation (``ServiceSettings.levels_for``)."""
    level_requirement: str = ""
    """How a refusal names them (``ServiceSettings.level_requirement``)."""
    subject: SubjectDeclaration | None = None
    """The operation's declared data subject (``ServiceSettings.subject_of``)."""

    def validate(self, data: Any) -> None:
        if self.validator.is_valid(data):
            return
        errors = sorted(
            self.validator.validator.iter_errors(data), key=lambda e: list(e.absolute_path)
        )
        if errors:
            raise ValidationFailed(
                "The call's data does not match the operation's schema.",
                errors=[
                    {
                        "path": "/" + "/".join(str(p) for p in e.absolute_path),
                        "message": _safe_message(e),
                    }
                    for e in errors[:20]
                ],
            )

    async def invoke(self, data: Any, context: CallContext, trace: CallTrace) -> CallResult:
        call = Call(self.system_operation, self.request_map.apply(data), context)
        reply = await self.stack(call, trace)
        return CallResult(
            self.response_map.apply(reply.data), trace, reply.request_digest, reply.response_digest
        )


StackFactory = Callable[[RouteSettings, Operation], Next]


class Catalog:
    def __init__(
        self,
        services: Mapping[str, ServiceSettings],
        routes: Iterable[Route],
        agreements: Mapping[tuple[str, str, str, str], Route],
    ) -> None:
        self.services = services
        self.routes = tuple(routes)
        self._by_key = agreements
        # What ``route`` answers without an error, by the very keys a call names: each
        # agreement's own, and the same with no operation for a service of only one.
        self._named: dict[tuple[str, str | None, str, str], Route] = {}
        for (code, operation, receiving, handling), route in agreements.items():
            self._named[(code, operation, receiving, handling)] = route
            service = services.get(code)
            if service is not None and len(service.operations) == 1:
                self._named[(code, None, receiving, handling)] = route
        # Linked services (联动办理): the application data's schema, compiled once.
        self._linked = {
            code: Draft202012Validator(
                service.linked.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
            for code, service in services.items()
            if service.linked is not None
        }

    @classmethod
    def build(cls, settings: Settings, stack_for: StackFactory) -> Catalog:
        routes: list[Route] = []
        index: dict[tuple[str, str, str, str], Route] = {}
        for rs in settings.routes:
            service = settings.services[rs.service]
            operation = service.operations[rs.operation]
            route = Route(
                service_code=rs.service,
                operation_name=rs.operation,
                service=service,
                operation=operation,
                handling=rs.handling,
                system=rs.system,
                system_operation=rs.system_operation,
                request_map=compile_mapping(rs.request),
                response_map=compile_mapping(rs.response),
                validator=SchemaGate(
                    Draft202012Validator(
                        operation.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
                    )
                ),
                stack=stack_for(rs, operation),
                licence_data=rs.licence_data,
                levels=service.levels_for(rs.operation),
                level_requirement=service.level_requirement(rs.operation),
                subject=service.subject_of(rs.operation),
            )
            routes.append(route)
            receiving = ["*"] if rs.receiving == "*" else rs.receiving
            for province in receiving:
                index[(rs.service, rs.operation, province, rs.handling)] = route
        return cls(settings.services, routes, index)

    def service(self, code: str) -> ServiceSettings:
        try:
            return self.services[code]
        except KeyError:
            raise UnknownService(f"There is no service {code!r} in the catalogue.") from None

    def linked_validator(self, code: str) -> Draft202012Validator:
        """The validator of a linked service's application data (KeyError if not linked)."""
        return self._linked[code]

    def provinces(self, code: str) -> dict[str, list[str]]:
        """For the guide: each operation's handling provinces."""
        out: dict[str, set[str]] = {}
        for route in self.routes:
            if route.service_code == code:
                out.setdefault(route.operation_name, set()).add(route.handling)
        return {op: sorted(p) for op, p in sorted(out.items())}

    def agreements(self, code: str) -> list[dict[str, str]]:
        return sorted(
            (
                {"operation": op, "receiving": rec, "handling": hand}
                for (svc, op, rec, hand) in self._by_key
                if svc == code
            ),
            key=lambda a: (a["operation"], a["receiving"], a["handling"]),
        )

    def route(self, code: str, operation: str | None, receiving: str, handling: str) -> Route:
        found = self._named.get((code, operation, receiving, handling))
        if found is not None:
            return found
        service = self.service(code)
        if operation is None:
            if len(service.operations) != 1:
                raise UnknownOperation(
                    f"Service {code!r} has several operations; name one of "
                    f"{sorted(service.operations)}."
                )
            operation = next(iter(service.operations))
        if operation not in service.operations:
            raise UnknownOperation(
                f"Service {code!r} has no operation {operation!r}; it has "
                f"{sorted(service.operations)}."
            )
        route = self._by_key.get((code, operation, receiving, handling)) or self._by_key.get(
            (code, operation, "*", handling)
        )
        if route is None:
            raise NoAgreement(
                f"No agreement lets province {receiving} use {code}/{operation} "
                f"handled in province {handling}."
            )
        return route

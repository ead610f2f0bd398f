"""One error tree for the whole gateway; every class is data: a stable code, an HTTP status.

    GatewayError
    ├── ClientError                      the caller sent something we refuse (4xx)
    │   ├── InvalidRequest               client.invalid_request
    │   ├── MalformedJson                client.malformed_json
    │   ├── ValidationFailed             client.validation_failed (with the failing paths)
    │   ├── UnsupportedMediaType         client.unsupported_media_type
    │   ├── PayloadTooLarge              client.payload_too_large
    │   ├── RequestTimeout               client.request_timeout   (408: the body came too slowly)
    │   ├── NotFound                     client.not_found
    │   ├── UnknownService               client.unknown_service
    │   ├── UnknownOperation             client.unknown_operation
    │   ├── NoAgreement                  client.no_agreement (no route for the province pair)
    │   ├── MethodNotAllowed             client.method_not_allowed
    │   ├── Unauthenticated              client.unauthenticated
    │   ├── Forbidden                    client.forbidden
    │   ├── InsufficientLevel            client.insufficient_level (names the level needed)
    │   ├── NotDataSubject               client.not_data_subject (someone else's data, no grant)
    │   ├── ProvinceNotAllowed           client.province_not_allowed (not the client's province)
    │   ├── NoCaseAuthority              client.no_case_authority (a department off its case)
    │   ├── SubjectFieldAmbiguous        client.subject_field_ambiguous (a subject field twice)
    │   └── RateLimited                  client.rate_limited (429, Retry-After; names the limit)
    ├── BackendError                     a provincial system failed us (422/502/503/504)
    │   ├── BackendUnavailable           backend.unavailable   (never reached it: safe to retry)
    │   ├── BackendTimeout               backend.timeout
    │   ├── BackendServerError           backend.server_error     (5xx)
    │   ├── BackendRateLimited           backend.rate_limited     (429, Retry-After)
    │   ├── BackendRejected              backend.rejected         (4xx: it refused our request)
    │   ├── BackendFault                 backend.fault            (SOAP Fault, either side)
    │   ├── BackendBadResponse           backend.bad_response     (unreadable answer)
    │   ├── BackendResponseTooLarge      backend.response_too_large
    │   └── CircuitOpen                  backend.circuit_open     (we did not even try)
    └── InternalError                    our own fault (500/503)
        ├── SystemBusy                   gateway.system_busy      (concurrency limit reached)
        ├── AuditUnavailable             gateway.audit_unavailable
        ├── IdentityStoreUnavailable     gateway.identity_store_unavailable (Redis down)
        └── Overloaded                   gateway.overloaded (503, Retry-After: too much in flight)

Backend errors carry two facts the retry layer needs and nothing else: ``retryable`` (would
trying again help at all) and ``reached_backend`` (may the request have been processed). A
request that may have reached the back-end is retried only when the operation is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error the gateway renders; ``detail`` must be safe to show a caller."""

    code: ClassVar[str] = "gateway.internal"
    http_status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra: dict[str, Any] = extra
        super().__init__(self.detail)

    @property
    def status(self) -> int:
        """The HTTP status of this instance (a class default most of the time)."""
        return self.http_status


# --- client side ------------------------------------------------------------------------------


class ClientError(GatewayError):
    code = "client.invalid_request"
    http_status = 400
    title = "Invalid request"


class InvalidRequest(ClientError):
    pass


class MalformedJson(ClientError):
    code = "client.malformed_json"
    title = "The body is not valid JSON"


class ValidationFailed(ClientError):
    code = "client.validation_failed"
    http_status = 422
    title = "The body does not match the schema"

    def __init__(self, detail: str | None = None, errors: Sequence[Mapping[str, str]] = ()) -> None:
        super().__init__(detail, errors=list(errors))


class UnsupportedMediaType(ClientError):
    code = "client.unsupported_media_type"
    http_status = 415
    title = "Unsupported content type"


class PayloadTooLarge(ClientError):
    code = "client.payload_too_large"
    http_status = 413
    title = "The body is too large"


class RequestTimeout(ClientError):
    """The request's body did not arrive within ``server.body_timeout``; the connection closes."""

    code = "client.request_timeout"
    http_status = 408
    title = "The request body came too slowly"


class NotFound(ClientError):
    code = "client.not_found"
    http_status = 404
    title = "Not found"


class UnknownService(NotFound):
    code = "client.unknown_service"
    title = "No such service in the catalogue"


class UnknownOperation(NotFound):
    code = "client.unknown_operation"
    title = "The service has no such operation"


class NoAgreement(ClientError):
    code = "client.no_agreement"
    http_status = 422
    title = "No agreement covers this service between these provinces"


class MethodNotAllowed(ClientError):
    code = "client.method_not_allowed"
    http_status = 405
    title = "Method not allowed"


class Unauthenticated(ClientError):
    code = "client.unauthenticated"
    http_status = 401
    title = "Authentication required"


class Forbidden(ClientError):
    code = "client.forbidden"
    http_status = 403
    title = "Not allowed"


class InsufficientLevel(Forbidden):
    code = "client.insufficient_level"
    title = "A higher identity level is needed"

    def __init__(self, required: str, current: str) -> None:
        super().__init__(
            f"This service needs identity level {required}; the session has {current}.",
            required_level=required,
            current_level=current,
        )


class NotDataSubject(Forbidden):
    """The request touches the data of someone who is not the principal, and no grant covers
    it (gateway/subjects.py)."""

    code = "client.not_data_subject"
    title = "The data belongs to someone else"


class ProvinceNotAllowed(Forbidden):
    """The client is registered for other receiving provinces than the one it names."""

    code = "client.province_not_allowed"
    title = "The client does not receive for this province"


class NoCaseAuthority(Forbidden):
    """A provincial department's system acted outside an open case it handles."""

    code = "client.no_case_authority"
    title = "No open case of this department covers the request"


class SubjectFieldAmbiguous(ClientError):
    """A field naming the data subject appears twice, or in two spellings: which one a
    back-end would read is not certain, so the request is refused before anything is sent."""

    code = "client.subject_field_ambiguous"
    title = "A field naming the data subject is ambiguous"


class RateLimited(ClientError):
    """A rate limit of /api/* refused the call before anything else happened (gateway/ratelimit)."""

    code = "client.rate_limited"
    http_status = 429
    title = "Too many calls"

    def __init__(self, policy: str, retry_after: int) -> None:
        whose = {"person": "this person", "source": "this address"}.get(policy, "this client")
        super().__init__(
            f"Too many calls for {whose}; try again in {retry_after} seconds.",
            policy=policy,
        )
        self.retry_after = retry_after


# --- backend side -----------------------------------------------------------------------------


class BackendError(GatewayError):
    code = "backend.error"
    http_status = 502
    title = "The provincial system failed"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        reached_backend: bool,
        retry_after: float | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, **extra)
        self.reached_backend = reached_backend
        self.retry_after = retry_after


class BackendUnavailable(BackendError):
    code = "backend.unavailable"
    http_status = 503
    title = "The provincial system cannot be reached"
    retryable = True


class BackendTimeout(BackendError):
    code = "backend.timeout"
    http_status = 504
    title = "The provincial system did not answer in time"
    retryable = True


class BackendServerError(BackendError):
    code = "backend.server_error"
    http_status = 502
    title = "The provincial system reported an internal error"
    retryable = True


class BackendRateLimited(BackendError):
    code = "backend.rate_limited"
    http_status = 503
    title = "The provincial system asked us to slow down"
    retryable = True


class BackendRejected(BackendError):
    """The system understood and refused (4xx): the caller's data is wrong for it, so 422."""

    code = "backend.rejected"
    http_status = 422
    title = "The provincial system refused the request"


class BackendFault(BackendError):
    """A SOAP Fault. Server-side faults are worth another try; client-side ones are not."""

    code = "backend.fault"
    http_status = 502
    title = "The provincial system answered with a fault"

    def __init__(self, detail: str | None = None, *, fault_side: str, **extra: Any) -> None:
        super().__init__(detail, reached_backend=True, fault_side=fault_side, **extra)
        self.fault_side = fault_side

    @property
    def is_retryable(self) -> bool:
        return self.fault_side == "server"

    @property
    def status(self) -> int:
        return 422 if self.fault_side == "client" else 502


class BackendBadResponse(BackendError):
    code = "backend.bad_response"
    http_status = 502
    title = "The provincial system's answer could not be read"


class BackendResponseTooLarge(BackendError):
    code = "backend.response_too_large"
    http_status = 502
    title = "The provincial system's answer was too large"


class CircuitOpen(BackendError):
    code = "backend.circuit_open"
    http_status = 503
    title = "The provincial system is failing; calls are paused"
    retryable = False

    def __init__(self, system: str, retry_after: float, cause: str | None = None) -> None:
        because = f" (it was paused after: {cause})" if cause else ""
        super().__init__(
            f"Calls to system {system} are paused after repeated failures{because}.",
            reached_backend=False,
            retry_after=retry_after,
        )
        self.cause = cause
        """The system's own failure that opened the breaker, as ``code: detail``."""


# --- our side ---------------------------------------------------------------------------------


class InternalError(GatewayError):
    code = "gateway.internal"
    http_status = 500
    title = "Internal error"


class SystemBusy(InternalError):
    code = "gateway.system_busy"
    http_status = 503
    title = "Too many calls to this provincial system are in progress"


class AuditUnavailable(InternalError):
    code = "gateway.audit_unavailable"
    http_status = 503
    title = "The audit trail cannot be written; the call was not made"


class IdentityStoreUnavailable(InternalError):
    code = "gateway.identity_store_unavailable"
    http_status = 503
    title = "The identity store cannot be reached; try again"


class Overloaded(InternalError):
    """This worker already holds as many requests (or body bytes) as it admits: refused at the
    door, before anything else happened (gateway/http/admission.py)."""

    code = "gateway.overloaded"
    http_status = 503
    title = "The gateway is overloaded; try again shortly"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests in progress; try again in {retry_after} seconds.")
        self.retry_after = retry_after


def is_retryable(error: BaseException) -> bool:
    """Would another attempt help? Only our own error types are ever consulted."""
    if isinstance(error, BackendFault):
        return error.is_retryable
    return isinstance(error, BackendError) and error.retryable

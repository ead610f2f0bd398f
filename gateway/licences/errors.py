"""The refusals of licence verification, each with a stable code (problem+json)."""

from __future__ import annotations

from typing import Any

from gateway.errors import BackendBadResponse, BackendError, ClientError, Forbidden


class UnknownLicenceType(ClientError):
    code = "client.unknown_licence_type"
    http_status = 422
    title = "No such licence type in the catalogue"


class LicenceIssuerUnknown(ClientError):
    code = "client.licence_issuer_unknown"
    http_status = 422
    title = "No connected issuer issues this licence type in that province"


class LicenceNotFound(ClientError):
    code = "client.licence_not_found"
    http_status = 422
    title = "The issuer holds no such licence for this holder"


class LicenceAmbiguous(ClientError):
    code = "client.licence_ambiguous"
    http_status = 422
    title = "The holder has several licences of this type: name its number"


class LicenceNotSubjects(Forbidden):
    code = "client.licence_not_subjects"
    title = "The licence belongs to someone else than the case's data subject"


class LicenceSealInvalid(ClientError):
    code = "client.licence_seal_invalid"
    http_status = 422
    title = "The issuer's electronic seal does not hold over this licence"


class LicenceNotValid(ClientError):
    """The issuer says the licence is no longer valid; ``status`` names how (answered as the
    problem's ``licence_status``: ``status`` there is the HTTP status)."""

    code = "client.licence_not_valid"
    http_status = 422
    title = "The licence is not valid"

    def __init__(
        self, detail: str | None = None, *, status: str | None = None, **extra: Any
    ) -> None:
        if status is not None:
            extra["licence_status"] = status
        super().__init__(detail, **extra)


class LicenceRevoked(LicenceNotValid):
    code = "client.licence_revoked"
    title = "The issuer has revoked the licence"


class LicenceExpired(LicenceNotValid):
    code = "client.licence_expired"
    title = "The licence has expired"


class LicenceCancelled(LicenceNotValid):
    code = "client.licence_cancelled"
    title = "The issuer has cancelled the licence"


class LicenceChanged(LicenceNotValid):
    code = "client.licence_changed"
    title = "The licence has changed at its issuer since this copy was sealed"


NOT_VALID: dict[str, type[LicenceNotValid]] = {
    "revoked": LicenceRevoked,
    "expired": LicenceExpired,
    "cancelled": LicenceCancelled,
    "changed": LicenceChanged,
}


class LicenceIssuerUnavailable(BackendError):
    """The issuer cannot be asked and no trusted answer of it is at hand: fail closed."""

    code = "backend.licence_issuer_unavailable"
    http_status = 503
    title = "The licence's issuer cannot be reached"
    retryable = True


class LicenceAnswerMalformed(BackendBadResponse):
    code = "backend.licence_answer_malformed"
    title = "The issuer's answer about a licence cannot be used"


class LicenceVolumeExceeded(Forbidden):
    code = "client.licence_volume_exceeded"
    title = "Bulk use of this licence type needs the issuer's approval"

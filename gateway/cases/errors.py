"""Case errors, as branches of the one gateway error tree (stable codes, HTTP statuses)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.errors import ClientError, Forbidden, InternalError, NotFound, ValidationFailed


class IdempotencyKeyMissing(ClientError):
    code = "client.idempotency_key_missing"
    http_status = 400
    title = "An Idempotency-Key header is required"


class IdempotencyKeyReused(ClientError):
    code = "client.idempotency_key_reused"
    http_status = 409
    title = "This Idempotency-Key was used for a different application"


class MaterialsInvalid(ValidationFailed):
    code = "client.materials_invalid"
    title = "The materials failed verification"

    def __init__(self, errors: Sequence[Mapping[str, str]]) -> None:
        super().__init__("Some materials are missing, unknown or badly referenced.", errors)


class ModeNotOffered(ClientError):
    code = "client.mode_not_offered"
    http_status = 422
    title = "The service is not offered in this handling mode"


class NotASubmission(ClientError):
    code = "client.not_a_submission"
    http_status = 422
    title = "A case needs a submit operation"


class ClerkRequired(Forbidden):
    code = "client.clerk_required"
    title = "Only a window clerk can take in this application"


class CaseNotFound(NotFound):
    code = "client.case_not_found"
    title = "No such case"


class CaseNotReplayable(ClientError):
    code = "client.case_not_replayable"
    http_status = 409
    title = "The case has nothing dead-lettered to replay"


class CallbackRefused(ClientError):
    code = "client.callback_refused"
    http_status = 401
    title = "The callback's signature or timestamp is not valid"


class CallbackInvalid(ClientError):
    code = "client.callback_invalid"
    http_status = 422
    title = "The callback does not name a part this system handles"


class CaseStoreDown(InternalError):
    code = "gateway.case_store_unavailable"
    http_status = 503
    title = "Cases cannot be written or read right now; try again"


class CaseNotAwaitingSupplement(ClientError):
    code = "client.case_not_awaiting_supplement"
    http_status = 409
    title = "The case does not wait for a supplement (补齐补正)"

"""problem+json bodies: extension members never replace the standard ones."""

from __future__ import annotations

import orjson

from gateway.errors import ClientError
from gateway.http.problem import problem_response


def test_an_extension_named_like_a_standard_member_does_not_replace_it() -> None:
    extra = {"status": "revoked", "code": "other", "title": "x", "hint": "kept"}
    error = ClientError("bad", **extra)
    response = problem_response(error, "req-1", "/api/v1/cases")
    assert response.status == 400
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    assert body["status"] == 400
    assert body["code"] == "client.invalid_request"
    assert body["title"] == ClientError.title
    assert body["request_id"] == "req-1"
    assert body["instance"] == "/api/v1/cases"
    assert body["hint"] == "kept"

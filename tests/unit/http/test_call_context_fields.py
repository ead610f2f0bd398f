"""The call handler makes the call context positionally: every field of what the adapter is
told must still be the one it names."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.adapter import CallContext
from tests.subject_fixtures import person_key
from tests.unit.http.test_app import ID, Backend, auth, backend, call_body, client

__all__ = ["backend", "client"]  # the fixtures of the app's own tests

FIELDS = [
    "request_id",
    "purpose",
    "service",
    "receiving_province",
    "handling_province",
    "principal",
    "actor",
    "level",
    "case_id",
    "authorisation_ref",
    "idempotency_key",
    "identity_assertion",
    "client",
    "subjects",
    "subject_hashes",
]


def test_the_fields_keep_the_order_the_handler_gives_them_in() -> None:
    assert [f.name for f in dataclasses.fields(CallContext)] == FIELDS


async def test_every_field_of_a_routed_calls_context_is_the_one_it_names(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    response = await client.post(
        "/api/v1/services/degree-verification/calls",
        json=call_body(case_id="case-7"),
        headers=auth(),
    )
    assert response.status == 200, await response.text()
    context = backend.adapter.calls[0].context
    seen = {name: getattr(context, name) for name in FIELDS}
    hashes = seen.pop("subject_hashes")
    assert seen == {
        "request_id": response.headers["X-Request-ID"],
        "purpose": "hiring check",
        "service": "degree-verification",
        "receiving_province": "63",
        "handling_province": "61",
        "principal": "citizen-a",
        "actor": "citizen-a",
        "level": "L2",
        "case_id": "case-7",
        "authorisation_ref": None,
        "idempotency_key": None,
        "identity_assertion": None,
        "client": seen["client"],
        "subjects": (person_key(ID),),
    }
    assert isinstance(seen["client"], str)
    assert seen["client"]
    assert isinstance(hashes, str)
    assert hashes.startswith("person:")

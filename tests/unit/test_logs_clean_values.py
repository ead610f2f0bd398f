"""The log masking remembers values found to have nothing to mask: every line is still masked
exactly as before, a value is searched again once a secret it holds is registered, personal
data is never remembered, and what is remembered is bounded."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from gateway import logs
from gateway.logs import (
    configure_logging,
    forget_secrets_except,
    mask_secrets,
    mask_text,
    register_secret,
    registered_secrets,
)

ID = "630102199003071234"  # shape of a resident ID; fictional
MOBILE = "13912345678"


@pytest.fixture(autouse=True)
def _secrets_kept() -> Iterator[None]:
    kept = registered_secrets()
    yield
    forget_secrets_except(kept)


def _line(stream: io.BytesIO) -> dict[str, object]:
    lines = stream.getvalue().decode().strip().splitlines()
    found: dict[str, object] = json.loads(lines[-1])
    return found


def test_a_value_seen_clean_is_masked_once_a_secret_in_it_is_registered() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("t")
    value = "route-with-token-Zx81qq-inside"
    for _ in range(3):
        log.info("request_completed", route=value)
    assert _line(stream)["route"] == value
    register_secret("token-Zx81qq")
    log.info("request_completed", route=value)
    assert _line(stream)["route"] == "route-with-[redacted]-inside"


def test_personal_data_is_masked_every_time_and_never_remembered() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("t")
    for _ in range(3):
        log.info("request_completed", detail=f"holder {ID}", phone=MOBILE, route="/api/x")
        line = _line(stream)
        assert ID not in json.dumps(line)
        assert MOBILE not in json.dumps(line)
        assert line["phone"] == "139****5678"
    remembered = logs._clean
    assert "/api/x" in remembered
    assert not any(ID in v or MOBILE in v for v in remembered)


def test_a_name_is_masked_as_a_name_though_the_same_text_was_seen_clean_elsewhere() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("t")
    log.info("request_completed", note="王小明")
    assert _line(stream)["note"] == "王小明"
    log.info("request_completed", name="王小明")
    assert _line(stream)["name"] == "王**"


@pytest.mark.parametrize(
    "text",
    ["plain", f"id {ID}", f"call {MOBILE}", "value-secret-Qw77zz-x", "", "x" * 300, "6" * 17],
)
def test_the_remembered_path_gives_what_the_masks_give(text: str) -> None:
    register_secret("secret-Qw77zz")
    expected = mask_text(mask_secrets(text))
    for _ in range(3):
        assert logs._masked_text(text) == expected


def test_what_is_remembered_is_bounded() -> None:
    for n in range(3 * logs._CLEAN_MAX):
        logs._masked_text(f"value-{n}")
        assert len(logs._clean) <= logs._CLEAN_MAX
    logs._masked_text("y" * (logs._CLEAN_LONGEST + 1))
    assert "y" * (logs._CLEAN_LONGEST + 1) not in logs._clean

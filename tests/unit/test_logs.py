from __future__ import annotations

import io
import json

import pytest
import structlog

from gateway.logs import configure_logging, mask_name, mask_text
from gateway.mapping import compile_mapping

ID = "630102199003071234"  # shape of a resident ID; fictional


def test_mask_text_masks_id_numbers_and_mobiles_inside_text() -> None:
    masked = mask_text(f"holder {ID} phone 13912345678 ref 12345")
    assert ID not in masked
    assert "13912345678" not in masked
    assert "6****************4" in masked
    assert "139****5678" in masked
    assert "ref 12345" in masked


def test_mask_name_keeps_only_the_surname() -> None:
    assert mask_name("张三丰") == "张**"
    assert mask_name("李") == "李*"


def test_every_json_line_is_masked_and_secrets_dropped() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("t")
    log.info(
        "backend_call_failed",
        detail=f"person {ID}",
        name="王小明",
        password="hunter2",
        nested={"client_secret": "s3cret", "note": "call 13800001111"},
    )
    line = json.loads(stream.getvalue().decode().strip())
    text = json.dumps(line, ensure_ascii=False)
    for leaked in (ID, "王小明", "hunter2", "s3cret", "13800001111"):
        assert leaked not in text
    assert line["password"] == "[redacted]"
    assert line["name"] == "王**"
    assert line["event"] == "backend_call_failed"


def test_a_configured_secret_is_masked_under_any_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TB_LOG_MASK_SECRET", "body-password-42ab")
    # Read as the configuration reads it: a secret reference in a request mapping.
    payload = compile_mapping({"password": {"env": "TB_LOG_MASK_SECRET"}}).apply({})
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    structlog.get_logger("t").warning(
        "backend_call_failed", detail=f"answer echoed {payload['password']} back", extra=[payload]
    )
    text = stream.getvalue().decode()
    assert "body-password-42ab" not in text
    assert "[redacted]" in text

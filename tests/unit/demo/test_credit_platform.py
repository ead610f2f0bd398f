"""Qinghai's demo credit platform (S14): the public record by name, the non-public summary by
credit code and nothing more, behind its API key."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from gateway.demo.credit import PLATEAU_LOGISTICS, SALT_LAKE, CreditState, build_credit_app

KEY = {"X-API-Key": "k" * 24}


async def test_public_record_summary_and_refusals() -> None:
    app = build_credit_app(CreditState(api_key="k" * 24))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        got = await client.get(
            "/api/public/enterprises", params={"name": SALT_LAKE.name}, headers=KEY
        )
        public = await got.json()
        assert got.status == 200
        assert public["creditCode"] == SALT_LAKE.credit_code
        assert public["penalties"][0]["kind"] == "警告"

        got = await client.get(
            "/api/nonpublic/summary",
            params={"creditCode": PLATEAU_LOGISTICS.credit_code.lower()},
            headers=KEY,
        )
        summary = await got.json()
        assert got.status == 200
        assert (summary["taxGrade"], summary["openEnforcements"]) == ("B", 2)
        assert summary["socialInsuranceArrears"] is True
        assert "52011.00" not in await got.text(), "never the raw detail"

        for path, params in (
            ("/api/public/enterprises", {"name": "不存在的公司"}),
            ("/api/nonpublic/summary", {"creditCode": "91630100MA7500000X"}),
        ):
            got = await client.get(path, params=params, headers=KEY)
            assert (got.status, (await got.json())["error"]) == (404, "enterprise_not_found")
        got = await client.get(
            "/api/nonpublic/summary", params={"creditCode": SALT_LAKE.credit_code}
        )
        assert got.status == 401
        paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
        assert paths == {"/api/public/enterprises", "/api/nonpublic/summary"}, "no raw detail"

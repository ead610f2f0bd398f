"""Development tokens: a verified token is remembered, and still expires and stays bound to
its signature."""

from __future__ import annotations

import pytest

from gateway.errors import Unauthenticated
from gateway.identity.devtokens import DevTokenIssuer


async def test_a_remembered_token_still_expires() -> None:
    now = [1_000_000.0]
    issuer = DevTokenIssuer(b"k" * 32, clock=lambda: now[0])
    token = issuer.issue("citizen-1", "L2", ttl=60, person="p-1")
    first = await issuer.verify(token)
    assert (first.subject, first.level, first.person) == ("citizen-1", "L2", "p-1")
    assert await issuer.verify(token) == first
    now[0] += 61
    with pytest.raises(Unauthenticated, match="expired"):
        await issuer.verify(token)


async def test_a_changed_token_is_refused_after_the_true_one_was_remembered() -> None:
    issuer = DevTokenIssuer(b"k" * 32)
    token = issuer.issue("citizen-1", "L2")
    await issuer.verify(token)
    body, signature = token.removeprefix("dev.").split(".")
    other = DevTokenIssuer(b"x" * 32).issue("citizen-2", "L3")
    forged = f"dev.{other.removeprefix('dev.').split('.')[0]}.{signature}"
    with pytest.raises(Unauthenticated):
        await issuer.verify(forged)
    with pytest.raises(Unauthenticated):
        await DevTokenIssuer(b"x" * 32).verify(token)
    assert body


async def test_many_tokens_keep_working_past_the_cache_size() -> None:
    issuer = DevTokenIssuer(b"k" * 32)
    tokens = [issuer.issue(f"citizen-{n}", "L2") for n in range(1500)]
    for n, token in enumerate(tokens):
        assert (await issuer.verify(token)).subject == f"citizen-{n}"
    assert (await issuer.verify(tokens[0])).subject == "citizen-0"

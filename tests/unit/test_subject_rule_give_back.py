"""The data-subject rule gives back what it spent for a request it then refuses.

A request naming several subjects needs a grant for each one that is not the caller. When the
first subject's counted grant is used and a later subject's is refused (or the book cannot
answer), the whole request is refused and nothing is sent: the first grant's use is given back
to the book before the refusal is raised, and the binding of a request that goes on carries
each counted use it spent, so the call can give them back when it is not sent either.
"""

from __future__ import annotations

import pytest

from gateway.consent.contract import (
    ConsentStoreUnavailable,
    DataSubject,
    GrantAsk,
    GrantRefused,
    GrantUse,
)
from gateway.principal import Principal
from gateway.subject_config import SubjectField
from gateway.subjects import Binding, Named, SubjectRule
from tests.consent_books import MemoryConsentBook, TestGrant

CALLER = Principal(subject="ps-caller", level="L3", client_id="portal-63", person="pk-caller")
SELLER = DataSubject("person", "pk-seller")
BUYER = DataSubject("person", "pk-buyer")
DECLARATION = (SubjectField(person="seller.id_number"), SubjectField(person="buyer.id_number"))
NAMED = [Named(SELLER, None, "seller-id"), Named(BUYER, None, "buyer-id")]
SERVICE = "housing-fund-transfer"


async def check(rule: SubjectRule, *consent: str) -> Binding:
    return await rule.check(
        CALLER,
        DECLARATION,
        NAMED,
        consent=consent,
        service=SERVICE,
        operation="account-query",
        purpose="住房公积金异地转移接续",
    )


def book_with(**uses: int | None) -> MemoryConsentBook:
    book = MemoryConsentBook()
    book.grants["g-seller"] = TestGrant(SELLER, "portal-63", SERVICE, uses=uses.get("seller"))
    book.grants["g-buyer"] = TestGrant(BUYER, "portal-63", SERVICE, uses=uses.get("buyer"))
    return book


async def test_a_later_subject_refused_gives_back_the_earlier_counted_use() -> None:
    book = book_with(seller=1, buyer=0)  # the buyer's grant is used up
    rule = SubjectRule(None, book)
    with pytest.raises(GrantRefused):
        await check(rule, "g-seller", "g-buyer")
    assert book.grants["g-seller"].uses == 1, "the seller's single use is spent by nothing"
    assert [(a.grant_id, a.subject) for a in book.given_back] == [("g-seller", SELLER)]
    # The seller's grant still opens one request: with the buyer's renewed, it goes on.
    book.grants["g-buyer"].uses = 1
    binding = await check(rule, "g-seller", "g-buyer")
    assert (book.grants["g-seller"].uses, book.grants["g-buyer"].uses) == (0, 0)
    assert binding.grant == "g-seller,g-buyer"


async def test_the_book_failing_for_a_later_subject_gives_back_too() -> None:
    book = book_with(seller=1, buyer=1)

    class FailsForTheBuyer(MemoryConsentBook):
        async def use(self, ask: GrantAsk) -> GrantUse:
            if ask.subject == BUYER:
                raise ConsentStoreUnavailable("The consent store (test book) is down.")
            return await super().use(ask)

    failing = FailsForTheBuyer(grants=book.grants)
    with pytest.raises(ConsentStoreUnavailable):
        await check(SubjectRule(None, failing), "g-seller", "g-buyer")
    assert book.grants["g-seller"].uses == 1
    assert book.grants["g-buyer"].uses == 1
    assert [a.grant_id for a in failing.given_back] == ["g-seller"]


async def test_the_binding_carries_only_counted_uses() -> None:
    book = book_with(seller=2, buyer=None)  # the buyer's grant has no count
    rule = SubjectRule(None, book)
    binding = await check(rule, "g-seller", "g-buyer")
    assert [(a.grant_id, u.uses_left) for a, u in binding.spent] == [("g-seller", 1)]
    await rule.give_back(binding.spent)  # the call was then not sent
    assert book.grants["g-seller"].uses == 2
    assert book.grants["g-buyer"].uses is None


async def test_a_book_that_cannot_give_back_leaves_the_refusal_as_it_was() -> None:
    class CannotGiveBack(MemoryConsentBook):
        async def give_back(self, ask: GrantAsk, use: GrantUse) -> None:
            raise ConsentStoreUnavailable("The consent store (test book) is down.")

    book = CannotGiveBack(grants=book_with(seller=1, buyer=0).grants)
    with pytest.raises(GrantRefused):  # the request's own refusal, not the book's failure
        await check(SubjectRule(None, book), "g-seller", "g-buyer")
    assert book.grants["g-seller"].uses == 0, "what cannot be given back stays spent"


async def test_nothing_is_given_back_when_the_first_subject_is_refused() -> None:
    book = book_with(seller=0, buyer=1)
    with pytest.raises(GrantRefused):
        await check(SubjectRule(None, book), "g-seller", "g-buyer")
    assert book.given_back == []
    assert book.grants["g-buyer"].uses == 1  # never asked: the seller was refused first

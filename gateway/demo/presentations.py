"""Ready-made 亮证 requests for `tongban demo`: 马文华 shows his birth medical certificate with a
time-limited code; a window checks it once, sees only what 出生一件事 needs; the same code
again is refused as used, and one older than three minutes as expired.

The holder's development token carries his person key (computed here from the identity secrets
as the provider would for his sign-in), so the gateway can tell he is the holder; the window's
is a clerk's of the Shaanxi window client.
"""

from __future__ import annotations

import json
import shlex

from gateway.demo.residents import MA_WENHUA
from gateway.identity.devtokens import DevTokenIssuer
from gateway.identity.subject_keys import SubjectKeys
from gateway.settings import Settings

WINDOW_CLIENT = "demo-window-shaanxi"


def presentation_tokens(issuer: DevTokenIssuer, settings: Settings) -> dict[str, str] | None:
    """The holder's and the window's development tokens, or None without identity secrets."""
    identity = settings.gateway.identity
    if identity is None or identity.link_secret is None:
        return None
    keys = SubjectKeys(
        pairwise_secret=identity.pairwise_secret,
        link_secret=identity.link_secret,
        link_algorithm=identity.link_algorithm,
    )
    holder = issuer.issue(
        "demo-" + MA_WENHUA.key,
        "L3",
        client_id="demo-portal-qinghai",
        person=keys.person(MA_WENHUA.id_number).key,
    )
    window = issuer.issue("demo-clerk-61-0007", "L3", client_id=WINDOW_CLIENT, roles=["clerk"])
    return {"holder": holder, "window": window}


def presentation_lines(base_url: str, tokens: dict[str, str]) -> list[str]:
    holder = shlex.quote(f"Authorization: Bearer {tokens['holder']}")
    window = shlex.quote(f"Authorization: Bearer {tokens['window']}")
    ask = json.dumps(
        {"type": "birth-medical-certificate", "holder_id": MA_WENHUA.id_number},
        ensure_ascii=False,
    )
    read_code = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"code\"])'"
    check = (
        f"curl -s {shlex.quote(base_url + '/api/v1/licences/presentations/check')} -H {window}"
        " -H 'Content-Type: application/json'"
        ' -d "{\\"code\\": \\"$CODE\\", \\"service\\": \\"newborn-bundle\\"}"; echo'
    )
    return [
        "# 亮证: 马文华 shows his birth medical certificate (verified at Shaanxi) with a code",
        f"CODE=$(curl -s {shlex.quote(base_url + '/api/v1/licences/presentations')} -H {holder}"
        f" -H 'Content-Type: application/json' -d {shlex.quote(ask)} | {read_code})",
        "# a Shaanxi window checks it: valid at the issuer, the parents' names masked",
        check,
        "# the same code again: 409 client.presentation_used",
        check,
        "# a code older than three minutes: 422 client.presentation_expired (ask for a new one)",
        "",
    ]

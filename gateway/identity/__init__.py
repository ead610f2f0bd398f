"""Identity: the gateway's OpenID Connect provider, its access-token verifier, dev tokens.

    config.py     ProviderSettings; pairwise subjects (OIDC Core §8.1)
    clients.py    client registrations from configuration (OIDC Registration §2, RFC 7591)
    keys.py       signing keys: JWKS file (0600), rotation (RFC 7517, RFC 7518, RFC 7638)
    requests.py   framework-free request / response values; RFC 6749 §3.1/§3.2 parameter rules
    authn.py      Authenticator seam (SSO session and upstream federation plug in here)
    store.py      IdentityStore protocol + in-memory store: codes, grant families, tokens
    store_sqlite.py  SqliteIdentityStore: identity.sqlite in the data directory (the default)
    store_redis.py   RedisIdentityStore: shared by several instances (Lua compare-and-set)
    sessions.py   SessionStore protocol + in-memory store: SSO sessions, deadlines, pending logins
    sqlite_sessions.py  SqliteSessionStore: sessions.sqlite in the data directory (opt-in)
    redis_sessions.py   RedisSessionStore: sessions shared by several instances
    grants.py     authlib grants and endpoints (code + PKCE S256, refresh rotation, client
                  credentials, introspection RFC 7662, revocation RFC 7009, RP-initiated logout)
    provider.py   OpenIDProvider (authlib AuthorizationServer): authorize, token, userinfo,
                  discovery, JWT access tokens (RFC 9068) and ID tokens
    token_exchange.py  RFC 8693 token exchange: a window clerk's Counter token for an applicant
    staff.py      staff directories: the only platforms whose logins carry staff roles
    verifier.py   JwtAccessTokenVerifier: the TokenVerifier for /api/*
    person_key.py the gateway-internal person key and its sealed access-token claim (tb_pk)
    devtokens.py  development-only HMAC tokens for `tongban demo`

No module here imports aiohttp; gateway/http/oidc.py is the web layer.
"""

"""Request rate limits on /api/*: per OAuth client and per person, on the ``limits`` library.

    config.py     the ``Rate`` type ("600/minute", checked at load), RateLimitSettings
                  (gateway.yaml) and ClientRateLimits (a client's overrides in clients.yaml)
    limiter.py    ApiRateLimiter: which budgets a Principal draws on, the sliding-window
                  counter over memory, SQLite or Redis, and what happens when the store fails
                  (fail open)
    memory_storage.py, sqlite_storage.py, redis_storage.py
                  the stores: one process, one host's processes, several hosts; the shared
                  two draw a call's budgets in one step
    draws.py      what a shared store answers to a call's budgets, a refusal's Retry-After
    leases.py     blocks of a hot budget spent locally on the shared stores

Never imports aiohttp; gateway/http/ratelimit.py is the middleware. This ``__init__`` imports
nothing, so the settings loader and client registrations can import ``config`` alone.
"""

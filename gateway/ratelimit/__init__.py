"""Request rate limits on /api/*: per OAuth client and per person, on the ``limits`` library.

    config.py     the ``Rate`` type ("600/minute", checked at load), RateLimitSettings
                  (gateway.yaml) and ClientRateLimits (a client's overrides in clients.yaml)
    limiter.py    ApiRateLimiter: which budgets a Principal draws on, the sliding-window
                  counter over memory or Redis, and what happens when Redis fails (fail open)

Never imports aiohttp; gateway/http/ratelimit.py is the middleware. This ``__init__`` imports
nothing, so the settings loader and client registrations can import ``config`` alone.
"""

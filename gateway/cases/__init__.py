"""Cross-province cases (办件): model and state machine, durable outbox, delivery worker.

Never imports aiohttp; ``gateway.http.cases`` is the web face and ``gateway.stores`` holds the
SQLite and PostgreSQL stores. This package ``__init__`` imports nothing, so the settings loader
can import ``gateway.cases.config`` without a cycle.
"""

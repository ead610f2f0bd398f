"""Store implementations (SQLite embedded, PostgreSQL shared) behind the protocols of each core.

Each concern's protocol lives with its core (``gateway.audit.store.AuditStore``); this package
holds the mechanisms: connection set-up, versioned migrations and one class per store.
"""

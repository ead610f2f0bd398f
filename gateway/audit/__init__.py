"""Tamper-evident audit trail: records, hash chains, batching writer, signed checkpoints, verifier.

Never imports aiohttp; the HTTP layer and the CLI call this API.
"""

from gateway.audit.canonical import HashAlg, canonical_bytes, chain_hash, content_digest
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.export import ExportSummary, export_jsonl
from gateway.audit.keys import FileKeyStore, SigningKeyStore, StaticKeyStore
from gateway.audit.record import AuditEvent, AuditRecord, EventType
from gateway.audit.store import (
    AuditStore,
    AuditStoreError,
    AuditStoreUnavailable,
    ChainConflict,
    ChainHead,
    StoredCheckpoint,
    StoredRecord,
)
from gateway.audit.verifier import (
    Problem,
    ProblemKind,
    Progress,
    VerificationReport,
    verify_export,
    verify_store,
)
from gateway.audit.writer import AppendMode, AuditReadiness, AuditWriter, WriterSettings

__all__ = [
    "AppendMode",
    "AuditEvent",
    "AuditReadiness",
    "AuditRecord",
    "AuditStore",
    "AuditStoreError",
    "AuditStoreUnavailable",
    "AuditWriter",
    "ChainConflict",
    "ChainHead",
    "CheckpointSigner",
    "EventType",
    "ExportSummary",
    "FileKeyStore",
    "HashAlg",
    "Problem",
    "ProblemKind",
    "Progress",
    "SigningKeyStore",
    "StaticKeyStore",
    "StoredCheckpoint",
    "StoredRecord",
    "VerificationReport",
    "WriterSettings",
    "canonical_bytes",
    "chain_hash",
    "content_digest",
    "export_jsonl",
    "verify_export",
    "verify_store",
]

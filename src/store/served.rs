//! The key store as `serve` runs it, named once so the edges and background tasks agree on it.

/// The key store `serve` runs: PostgreSQL (observed by the metrics through its query observer).
pub type ServedStore = super::postgres::PgKeyStore;

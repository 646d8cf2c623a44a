//! Typed errors of the domain.

/// Errors raised by domain validation and by the Avro codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("record is too short to hold a single-object header ({len} bytes)")]
    Truncated { len: usize },
    #[error("record does not start with the Avro single-object marker C3 01")]
    NotSingleObject,
    #[error(
        "unknown schema fingerprint {0:016x}: the record was written with a schema this build does not know"
    )]
    UnknownFingerprint(u64),
    #[error("corrupt {schema} record: {reason}")]
    Corrupt {
        schema: &'static str,
        reason: String,
    },
    #[error("cannot encode {schema}: {reason}")]
    Encode {
        schema: &'static str,
        reason: String,
    },
    #[error("invalid cursor {0:?}: expected EPOCH-OFFSET, e.g. 1a2b3c4d-42")]
    BadCursor(String),
}

impl CoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

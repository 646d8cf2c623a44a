//! Identifiers and their validation.
//!
//! Ids are opaque strings chosen by the producer (users, devices, groups, topics) or derived
//! deterministically (notification ids), so that a producer retry with the same idempotency key
//! yields the same notification id everywhere, without coordination.

use crate::CoreError;

/// Longest accepted user, device, group, topic or key id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Namespace of notification ids (UUIDv5 over `producer \0 idempotency_key`).
const NOTIFICATION_NAMESPACE: uuid::Uuid = uuid::uuid!("5b1f0e8a-3c1d-4f7e-9a53-6e2d8c0f4b21");

/// Which bytes an id may hold: `[A-Za-z0-9._:@-]`, one lookup per byte.
const ID_BYTES: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        allowed[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'@' | b'-');
        b += 1;
    }
    allowed
};

/// Checks an id: 1..=[`MAX_ID_LEN`] bytes of `[A-Za-z0-9._:@-]`.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), CoreError> {
    if id.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(CoreError::invalid(
            field,
            format!("is {} bytes, at most {MAX_ID_LEN} allowed", id.len()),
        ));
    }
    // Bytes, not chars: every allowed character is ASCII, and the first byte that is not one
    // starts the character to name.
    if let Some(at) = id.bytes().position(|b| !ID_BYTES[b as usize]) {
        let c = id[at..]
            .chars()
            .next()
            .expect("only ASCII bytes before: a char starts here");
        return Err(CoreError::invalid(
            field,
            format!("contains {c:?}; allowed are letters, digits and . _ : @ -"),
        ));
    }
    Ok(())
}

/// The deterministic notification id for a producer's idempotency key.
///
/// The same UUID as `uuid::Uuid::new_v5`, hashed by the `sha1` crate, which uses the CPU's SHA
/// instructions where it has them: `uuid`'s portable SHA-1 was 5% of an async worker's samples
/// while it accepted batches, and the projector hashes every request again to check its id.
pub fn notification_id(producer: &str, idempotency_key: &str) -> String {
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(NOTIFICATION_NAMESPACE.as_bytes());
    sha.update(producer.as_bytes());
    sha.update([0]);
    sha.update(idempotency_key.as_bytes());
    let digest = sha.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let id = uuid::Builder::from_sha1_bytes(bytes).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The hand-assembled UUIDv5 is `uuid`'s, byte for byte (ids already in logs stay
        /// the ids of their keys).
        #[test]
        fn the_id_is_uuids_v5_of_producer_nul_key(producer in "\\PC{0,40}", key in "\\PC{0,140}") {
            let mut name = producer.as_bytes().to_vec();
            name.push(0);
            name.extend_from_slice(key.as_bytes());
            let want = uuid::Uuid::new_v5(&NOTIFICATION_NAMESPACE, &name).to_string();
            proptest::prop_assert_eq!(notification_id(&producer, &key), want);
        }
    }

    #[test]
    fn same_key_same_id_other_key_or_producer_other_id() {
        let a = notification_id("billing", "k1");
        assert_eq!(a, notification_id("billing", "k1"));
        assert_ne!(a, notification_id("billing", "k2"));
        assert_ne!(a, notification_id("shipping", "k1"));
        // The separator prevents ("ab","c") and ("a","bc") from colliding.
        assert_ne!(notification_id("ab", "c"), notification_id("a", "bc"));
    }

    #[test]
    fn every_ascii_character_is_allowed_or_refused_as_documented() {
        for b in 0u8..128 {
            let id = format!("a{}z", b as char);
            let allowed = b.is_ascii_alphanumeric() || "._:@-".contains(b as char);
            assert_eq!(validate_id("id", &id).is_ok(), allowed, "byte {b}");
        }
    }

    #[test]
    fn ids_are_validated_with_reasons() {
        assert!(validate_id("user_id", "alice@example.com").is_ok());
        assert!(validate_id("user_id", "").is_err());
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(validate_id("user_id", &long).is_err());
        let err = validate_id("user_id", "a b").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        // A character past ASCII is named whole, wherever it is.
        let err = validate_id("user_id", "ab\u{e9}c").unwrap_err();
        assert!(err.to_string().contains("'\u{e9}'"), "{err}");
        let err = validate_id("user_id", "\u{1f600}").unwrap_err();
        assert!(err.to_string().contains("'\u{1f600}'"), "{err}");
    }
}

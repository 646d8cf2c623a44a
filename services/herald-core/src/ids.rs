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

/// The prefix of the idempotency keys Herald generates for requests that come without one:
/// `herald:` and a UUIDv7 ([`generated_key`]). Such a key's notification id starts with the
/// key's time ([`notification_id`]).
pub const GENERATED_KEY_PREFIX: &str = "herald:";

/// A fresh idempotency key for a request sent without one: [`GENERATED_KEY_PREFIX`] and a
/// UUIDv7 (milliseconds since the Unix epoch, then random bits), so the notification ids of
/// keyless requests sort by the time they were accepted.
pub fn generated_key() -> String {
    let mut key = String::with_capacity(GENERATED_KEY_PREFIX.len() + 36);
    key.push_str(GENERATED_KEY_PREFIX);
    key.push_str(
        uuid::Uuid::now_v7()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    key
}

/// The 48-bit Unix-millisecond time of a key of the form [`GENERATED_KEY_PREFIX`] + a UUIDv7
/// in lower-case hyphenated form (what [`generated_key`] makes); `None` for any other key.
fn generated_key_time(key: &str) -> Option<[u8; 6]> {
    let text = key.strip_prefix(GENERATED_KEY_PREFIX)?;
    // Only the canonical text: one key, one spelling, so one id.
    if text.len() != 36 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let uuid = uuid::Uuid::try_parse(text).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let b = uuid.as_bytes();
    Some([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// The deterministic notification id for a producer's idempotency key.
///
/// UUIDv5 over `producer \0 key` in Herald's namespace; the same UUID as `uuid::Uuid::new_v5`,
/// hashed by the `sha1` crate, which uses the CPU's SHA instructions where it has them
/// (`uuid`'s portable SHA-1 was 5% of an async worker's samples while it accepted batches, and
/// the projector hashes every request again to check its id).
///
/// A key made by [`generated_key`] (`herald:` and a canonical UUIDv7) gives a UUIDv7 instead:
/// the key's 48-bit time, then 74 bits of the same SHA-1. Still a pure function of producer and
/// key (a retry with that key is the same notification, two producers' ids differ), but ids of
/// keyless requests now grow with time, so the stores that index notifications by id (the
/// fanout's record of what it expanded, each user's rows by id) add them at the end of their
/// B-trees instead of on a random page each (docs/benchmarks.md).
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
    let id = match generated_key_time(idempotency_key) {
        Some(time) => {
            bytes[..6].copy_from_slice(&time);
            uuid::Builder::from_custom_bytes(bytes)
                .with_version(uuid::Version::SortRand)
                .into_uuid()
        }
        None => uuid::Builder::from_sha1_bytes(bytes).into_uuid(),
    };
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
            proptest::prop_assume!(generated_key_time(&key).is_none());
            let mut name = producer.as_bytes().to_vec();
            name.push(0);
            name.extend_from_slice(key.as_bytes());
            let want = uuid::Uuid::new_v5(&NOTIFICATION_NAMESPACE, &name).to_string();
            proptest::prop_assert_eq!(notification_id(&producer, &key), want);
        }
    }

    /// A generated key's id is a UUIDv7 with the key's time and the v5 id's hash bits: the same
    /// for the same producer and key, another for another producer, and ids of keys generated
    /// later sort after (the point: stores keyed by id append instead of inserting at random).
    #[test]
    fn a_generated_keys_id_is_a_uuidv7_of_its_time() {
        let key = generated_key();
        assert!(key.starts_with(GENERATED_KEY_PREFIX), "{key}");
        validate_id("idempotency_key", &key).unwrap();
        let key_uuid = uuid::Uuid::parse_str(&key[GENERATED_KEY_PREFIX.len()..]).unwrap();
        let id = notification_id("billing", &key);
        let uuid = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(uuid.get_version_num(), 7, "{id}");
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
        assert_eq!(
            uuid.get_timestamp(),
            key_uuid.get_timestamp(),
            "the key's time"
        );
        assert_eq!(id, notification_id("billing", &key), "a pure function");
        assert_ne!(id, notification_id("shipping", &key));
        // Past the time and the version and variant bits, the bits of the v5 id of the same name.
        let v5 = uuid::Uuid::parse_str(&v5_id("billing", &key)).unwrap();
        let (a, b) = (uuid.as_u128(), v5.as_u128());
        let hash_bits = !(0xffff_ffff_ffff_u128 << 80) & !(0xf_u128 << 76) & !(0b11_u128 << 62);
        assert_eq!(a & hash_bits, b & hash_bits);

        let mut ids: Vec<(String, String)> = Vec::new();
        for _ in 0..3 {
            let key = generated_key();
            ids.push((notification_id("billing", &key), key));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(
            ids.windows(2).all(|w| w[0].0 < w[1].0),
            "ids of keys made milliseconds apart sort by time: {ids:?}"
        );
    }

    /// Only the canonical text of a UUIDv7 after the prefix makes a time-ordered id: any other
    /// key (a v4, upper case, braces, no prefix, trailing bytes) keeps its UUIDv5.
    #[test]
    fn other_keys_keep_their_uuidv5() {
        let v7 = uuid::Uuid::now_v7().to_string();
        let v4 = uuid::Uuid::new_v4().to_string();
        for key in [
            v7.clone(),
            format!("{GENERATED_KEY_PREFIX}{v4}"),
            format!("{GENERATED_KEY_PREFIX}{}", v7.to_uppercase()),
            format!("{GENERATED_KEY_PREFIX}{}", v7.replace('-', "")),
            format!("{GENERATED_KEY_PREFIX}{{{v7}}}"),
            format!("{GENERATED_KEY_PREFIX}{v7}x"),
            format!("x{GENERATED_KEY_PREFIX}{v7}"),
            GENERATED_KEY_PREFIX.to_owned(),
        ] {
            assert_eq!(notification_id("p", &key), v5_id("p", &key), "{key}");
        }
    }

    fn v5_id(producer: &str, key: &str) -> String {
        let mut name = producer.as_bytes().to_vec();
        name.push(0);
        name.extend_from_slice(key.as_bytes());
        uuid::Uuid::new_v5(&NOTIFICATION_NAMESPACE, &name).to_string()
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

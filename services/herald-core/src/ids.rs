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

/// A fresh idempotency key for a request sent without one at `now_ms` (Unix milliseconds, the
/// caller's clock): [`GENERATED_KEY_PREFIX`] and a UUIDv7 of that time and random bits, so the
/// notification ids of keyless requests sort by the time they were accepted.
pub fn generated_key(now_ms: i64) -> String {
    // uuid's thread-local generator (`fast-rng`), as for the v4 keys before.
    let random = uuid::Uuid::new_v4();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&random.as_bytes()[6..]);
    // A UUIDv7 holds 48 bits of milliseconds: times before the epoch or past the year 10889
    // (none a gateway has) are clamped into them.
    let millis = now_ms.clamp(0, (1 << 48) - 1) as u64;
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid();
    let mut key = String::with_capacity(GENERATED_KEY_PREFIX.len() + 36);
    key.push_str(GENERATED_KEY_PREFIX);
    key.push_str(
        uuid.hyphenated()
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
    if uuid.get_version_num() != 7 || uuid.get_variant() != uuid::Variant::RFC4122 {
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
    let digest = name_digest(producer, idempotency_key);
    encode(match generated_key_time(idempotency_key) {
        Some(time) => uuid_v7(digest, time),
        None => uuid_v5(digest),
    })
}

/// Whether `id` is the notification id of `producer` and `idempotency_key`
/// ([`notification_id`]). For a key of the generated form the key's UUIDv5 is accepted too: it
/// was the id of every key before such keys got UUIDv7s (2026-12-04), and a producer that
/// writes to the log itself may still compute it. Both come from producer and key alone, so
/// neither can be another producer's id. One hash either way.
pub fn is_notification_id(id: &str, producer: &str, idempotency_key: &str) -> bool {
    let digest = name_digest(producer, idempotency_key);
    let v5 = || id == encode(uuid_v5(digest));
    match generated_key_time(idempotency_key) {
        Some(time) => id == encode(uuid_v7(digest, time)) || v5(),
        None => v5(),
    }
}

/// The UUIDv5 of a name digest.
fn uuid_v5(digest: [u8; 16]) -> uuid::Uuid {
    uuid::Builder::from_sha1_bytes(digest).into_uuid()
}

/// A generated key's id: the digest with its first six bytes replaced by the key's time, as a
/// UUIDv7 (version 7, RFC 4122's variant).
fn uuid_v7(mut digest: [u8; 16], time: [u8; 6]) -> uuid::Uuid {
    digest[..6].copy_from_slice(&time);
    uuid::Builder::from_custom_bytes(digest)
        .with_version(uuid::Version::SortRand)
        .into_uuid()
}

/// The first 16 bytes of SHA-1 over the namespace, `producer`, a NUL and `key`: UUIDv5's name
/// hash.
fn name_digest(producer: &str, key: &str) -> [u8; 16] {
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(NOTIFICATION_NAMESPACE.as_bytes());
    sha.update(producer.as_bytes());
    sha.update([0]);
    sha.update(key.as_bytes());
    let digest = sha.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes
}

fn encode(id: uuid::Uuid) -> String {
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
            proptest::prop_assert_eq!(notification_id(&producer, &key), v5_id(&producer, &key));
        }
    }

    /// A generated key's id is a UUIDv7 with the key's time and the v5 id's hash bits: the same
    /// for the same producer and key, another for another producer, and ids of keys generated
    /// later sort after (the point: stores keyed by id append instead of inserting at random).
    #[test]
    fn a_generated_keys_id_is_a_uuidv7_of_its_time() {
        let key = generated_key(1_764_806_400_123);
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
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!(
            (secs, nanos),
            (1_764_806_400, 123_000_000),
            "the time given"
        );
        assert_eq!(id, notification_id("billing", &key), "a pure function");
        assert_ne!(id, notification_id("shipping", &key));
        // Past the time and the version and variant bits, the bits of the v5 id of the same name.
        let v5 = uuid::Uuid::parse_str(&v5_id("billing", &key)).unwrap();
        let (a, b) = (uuid.as_u128(), v5.as_u128());
        let hash_bits = !(0xffff_ffff_ffff_u128 << 80) & !(0xf_u128 << 76) & !(0b11_u128 << 62);
        assert_eq!(a & hash_bits, b & hash_bits);

        let ids: Vec<(String, String)> = [0, 1, 2, 1_000, 86_400_000]
            .iter()
            .map(|dt| {
                let key = generated_key(1_764_806_400_123 + dt);
                (notification_id("billing", &key), key)
            })
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0].0 < w[1].0),
            "ids of keys made milliseconds apart sort by time: {ids:?}"
        );
        let again = generated_key(1_764_806_400_123);
        assert_ne!(again, key, "the rest of a key is random");
    }

    /// Only the canonical text of a UUIDv7 after the prefix makes a time-ordered id: any other
    /// key (a v4, upper case, braces, no prefix, trailing bytes) keeps its UUIDv5.
    #[test]
    fn other_keys_keep_their_uuidv5() {
        let v7 = generated_key(1_764_806_400_123)[GENERATED_KEY_PREFIX.len()..].to_owned();
        let v4 = uuid::Uuid::new_v4().to_string();
        for key in [
            v7.clone(),
            format!("{GENERATED_KEY_PREFIX}{v4}"),
            format!("{GENERATED_KEY_PREFIX}{}", v7.to_uppercase()),
            format!("{GENERATED_KEY_PREFIX}{}", v7.replace('-', "")),
            format!("{GENERATED_KEY_PREFIX}{{{v7}}}"),
            format!("{GENERATED_KEY_PREFIX}{v7}x"),
            // Version 7 but not RFC 4122's variant (the 8 in `-7xxx-8xxx-` made a 0).
            format!("{GENERATED_KEY_PREFIX}{}", {
                let mut k = v7.clone().into_bytes();
                k[19] = b'0';
                String::from_utf8(k).unwrap()
            }),
            format!("x{GENERATED_KEY_PREFIX}{v7}"),
            GENERATED_KEY_PREFIX.to_owned(),
        ] {
            assert_eq!(notification_id("p", &key), v5_id("p", &key), "{key}");
        }
    }

    /// The examples docs/producers.md gives, for producers that compute ids themselves (the
    /// values from Python's `uuid` module, as docs/examples/producer.py computes them).
    #[test]
    fn the_documented_ids() {
        assert_eq!(
            notification_id("billing", "herald:0192a3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6b"),
            KNOWN_V7
        );
        assert_eq!(notification_id("billing", "invoice-7"), KNOWN_V5);
    }
    const KNOWN_V7: &str = "0192a3b4-c5d6-795d-8bc8-bce2378fdb82";
    const KNOWN_V5: &str = "c95f1329-3f79-59c7-a7f4-552ccaff5a59";

    /// A record of a generated-form key that carries the key's UUIDv5 (the rule before such
    /// keys had UUIDv7s) is accepted; any other id is not.
    #[test]
    fn a_generated_keys_uuidv5_is_accepted_too() {
        let key = generated_key(1_764_806_400_123);
        assert!(is_notification_id(&notification_id("p", &key), "p", &key));
        assert!(is_notification_id(&v5_id("p", &key), "p", &key));
        assert!(!is_notification_id(&v5_id("q", &key), "p", &key));
        assert!(!is_notification_id(&notification_id("q", &key), "p", &key));
        // For other keys only the UUIDv5.
        assert!(is_notification_id(&v5_id("p", "k"), "p", "k"));
        assert!(!is_notification_id(&v5_id("p", "k2"), "p", "k"));
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

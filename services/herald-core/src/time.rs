//! Times: Unix milliseconds in events, RFC 3339 on the wire.
//!
//! Accepted times lie in [`MIN_TIME_MS`, `MAX_TIME_MS`] (1970-01-01 to 9999-12-31, the years
//! RFC 3339 can write). Formatting never fails: a value outside that range, which older logs
//! may hold, is written as the nearest end of it.

use crate::CoreError;

/// Earliest accepted time: 1970-01-01T00:00:00.000Z.
pub const MIN_TIME_MS: i64 = 0;
/// Latest accepted time: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-30T05:24:24.123Z`; values outside the accepted range are clamped to it.
pub fn format_rfc3339_millis(ms: i64) -> String {
    let mut out = String::with_capacity(RFC3339_MILLIS_LEN);
    write_rfc3339_millis(ms, &mut out);
    out
}

/// Length of every [`format_rfc3339_millis`] text (the year has four digits in the range).
pub const RFC3339_MILLIS_LEN: usize = 24;

/// [`format_rfc3339_millis`] appended to `out`, without formatting machinery or allocation: a
/// notification frame writes one per delivery.
pub fn write_rfc3339_millis(ms: i64, out: &mut String) {
    let ms = ms.clamp(MIN_TIME_MS, MAX_TIME_MS);
    let (days, rem) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY));
    let (y, mo, d) = civil_from_days(days);
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, mo);
    put(8, 2, d);
    put(11, 2, rem / 3_600_000);
    put(14, 2, rem / 60_000 % 60);
    put(17, 2, rem / 1000 % 60);
    put(20, 3, rem % 1000);
    // Every byte is an ASCII digit or one of `-T:.Z`.
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// Checks that a time given in Unix milliseconds lies in the accepted range.
pub fn check_ms(field: &'static str, ms: i64) -> Result<i64, CoreError> {
    if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(CoreError::invalid(
            field,
            format!(
                "{ms} is outside {MIN_TIME_MS}..={MAX_TIME_MS} (1970-01-01 to 9999-12-31, Unix ms)"
            ),
        ))
    }
}

/// Parses an RFC 3339 date-time (`2026-01-31T12:00:00Z`, `…T12:00:00.250+01:00`) into Unix
/// milliseconds in the accepted range. Fractions beyond milliseconds are truncated.
pub fn parse_rfc3339(field: &'static str, text: &str) -> Result<i64, CoreError> {
    let bad = || {
        CoreError::invalid(
            field,
            format!(
                "{:?} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)",
                text.chars().take(64).collect::<String>()
            ),
        )
    };
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, CoreError> {
        let part = b.get(from..from + len).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let sep = |at: usize, want: &[u8]| -> Result<(), CoreError> {
        match b.get(at) {
            Some(c) if want.contains(c) => Ok(()),
            _ => Err(bad()),
        }
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt ")?;
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    sep(13, b":")?;
    sep(16, b":")?;
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap(y) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d < 1 || d > month_days || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad());
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if at + 6 == b.len() => {
            sep(at + 3, b":")?;
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let m = oh * 60 + om;
            if *c == b'+' { m } else { -m }
        }
        _ => return Err(bad()),
    };
    let ms = days_from_civil(y, mo, d) * MS_PER_DAY
        + ((h * 60 + mi - offset_min) * 60 + s.min(59)) * 1000
        + millis;
    check_ms(field, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_times_and_clamps_the_rest() {
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_millis(1_763_923_316_511),
            "2025-11-23T18:41:56.511Z"
        );
        assert_eq!(
            format_rfc3339_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(MAX_TIME_MS),
            "9999-12-31T23:59:59.999Z"
        );
        for far in [MAX_TIME_MS + 1, 1 << 62, i64::MAX] {
            assert_eq!(format_rfc3339_millis(far), "9999-12-31T23:59:59.999Z");
        }
        for before in [-1, i64::MIN] {
            assert_eq!(format_rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
        }
    }

    proptest::proptest! {
        /// The digit-by-digit writer says what `format!` says, for every accepted time.
        #[test]
        fn the_writer_is_the_formatted_text(ms in MIN_TIME_MS..=MAX_TIME_MS) {
            let (days, rem) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY));
            let (y, mo, d) = civil_from_days(days);
            let expected = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000
            );
            let mut written = String::from("<");
            write_rfc3339_millis(ms, &mut written);
            proptest::prop_assert_eq!(&written[1..], expected.as_str());
            proptest::prop_assert_eq!(written.len() - 1, RFC3339_MILLIS_LEN);
        }
    }

    #[test]
    fn parses_what_it_formats_and_refuses_the_rest() {
        for ms in [0, 1, 999, 1_763_923_316_511, 951_782_400_000, MAX_TIME_MS] {
            assert_eq!(parse_rfc3339("t", &format_rfc3339_millis(ms)), Ok(ms));
        }
        assert_eq!(
            parse_rfc3339("t", "1970-01-01T01:00:00+01:00"),
            Ok(0),
            "offsets are applied"
        );
        assert_eq!(parse_rfc3339("t", "1970-01-01T00:00:00.5Z"), Ok(500));
        assert_eq!(parse_rfc3339("t", "1970-01-01T00:00:00.123456Z"), Ok(123));
        for bad in [
            "",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00Zjunk",
            "10000-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "２０２６-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checks_the_range() {
        assert!(check_ms("t", 0).is_ok());
        assert!(check_ms("t", MAX_TIME_MS).is_ok());
        assert!(check_ms("t", -1).is_err());
        assert!(check_ms("t", 253_402_300_800_000).is_err());
        assert!(check_ms("t", i64::MAX).is_err());
    }
}

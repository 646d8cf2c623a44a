//! How a log of format 2 stores records: a partition's consecutive records of one group commit
//! in one row of `batches`, as Kafka stores a record batch, instead of a row (and an index
//! entry) per record. A group of 585 records over nine partitions is a handful of B-tree inserts
//! instead of 1,170; the bytes written are the records' own. docs/benchmarks.md (twenty-sixth
//! stop) has the measurements.
//!
//! A row's `data`: a version byte ([`VERSION`]), then each record in offset order:
//!
//! - the key: its length (varint) and UTF-8 bytes;
//! - the timestamp in ms: a zig-zag varint;
//! - the headers: `0` when they equal the previous record's in the row, otherwise their encoded
//!   length plus one (varint) and the encoding of [`super::headers`];
//! - the value: its length (varint) and bytes.
//!
//! A row holds at most [`MAX_LOG_ROW_RECORDS`] records and at most [`MAX_LOG_ROW_BYTES`] bytes
//! (a single record larger than that has a row of its own), so that a read from an offset in
//! the middle of a row decodes a bounded prefix it does not need.
//!
//! A row of at least [`COMPRESS_FROM_BYTES`] (and at most [`MAX_LOG_ROW_BYTES`]) is stored
//! compressed when that saves an eighth or more, as Kafka compresses a record batch: the version
//! byte [`VERSION_LZ4`], the length of the records' encoding above (varint), then that encoding
//! as one LZ4 block. A group commit's rows of a few hundred requests shrink about threefold
//! (2.7 in the benchmark's bursts), and with them the log's WAL, its checkpoints and the file
//! (docs/benchmarks.md, thirty-first stop). A build from before reads the rows stored as they
//! are and refuses a compressed one: it says a newer build wrote it.

use std::sync::Arc;

use herald_ports::log::{LogError, Record, StoredRecord, Topic};

use super::headers::{decode_headers, encode_headers};

/// The encoding of a row's `data`, its first byte: the records as they are.
pub const VERSION: u8 = 1;
/// The first byte of a row whose records are one LZ4 block.
pub const VERSION_LZ4: u8 = 2;
/// Rows shorter than this are stored as they are: a few records compress little.
pub const COMPRESS_FROM_BYTES: usize = 1024;
/// Most records in one row of `batches`.
pub const MAX_LOG_ROW_RECORDS: usize = 256;
/// A row takes no further record once its data is this long.
pub const MAX_LOG_ROW_BYTES: usize = 64 << 10;

/// The row being filled for one partition.
pub(super) struct Batch {
    pub first_offset: u64,
    pub count: usize,
    pub data: Vec<u8>,
    /// The headers of the last record written, to write `0` for a repeat.
    last_headers: Option<Vec<(String, Vec<u8>)>>,
}

impl Batch {
    pub(super) fn new(first_offset: u64) -> Self {
        let mut data = Vec::with_capacity(1024);
        data.push(VERSION);
        Batch {
            first_offset,
            count: 0,
            data,
            last_headers: None,
        }
    }

    /// Whether the row takes `r`: it holds fewer than [`MAX_LOG_ROW_RECORDS`] and `r` keeps it
    /// within [`MAX_LOG_ROW_BYTES`] (a row's first record always fits). A bound on the record's
    /// encoded size: lengths and the timestamp take at most 10 bytes each.
    pub(super) fn fits(&self, r: &Record) -> bool {
        let headers: usize = r.headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let size = 40 + r.key.len() + 4 + headers + r.value.len();
        self.count == 0
            || (self.count < MAX_LOG_ROW_RECORDS && self.data.len() + size <= MAX_LOG_ROW_BYTES)
    }

    /// One past the offset of the row's last record.
    pub(super) fn end_offset(&self) -> u64 {
        self.first_offset + self.count as u64
    }

    /// Adds the record at the row's next offset.
    pub(super) fn push(&mut self, r: &Record) {
        put_bytes(&mut self.data, r.key.as_bytes());
        put_varint(&mut self.data, zigzag(r.timestamp_ms));
        if self.last_headers.as_deref() == Some(r.headers.as_slice()) {
            self.data.push(0);
        } else {
            let encoded = encode_headers(&r.headers);
            put_varint(&mut self.data, encoded.len() as u64 + 1);
            self.data.extend_from_slice(&encoded);
            self.last_headers = Some(r.headers.clone());
        }
        put_bytes(&mut self.data, &r.value);
        self.count += 1;
    }

    /// The row's `data` as stored: compressed ([`VERSION_LZ4`]) when the row is at least
    /// [`COMPRESS_FROM_BYTES`], at most [`MAX_LOG_ROW_BYTES`], and an eighth or more smaller
    /// that way; else as it is.
    pub(super) fn stored(&self) -> std::borrow::Cow<'_, [u8]> {
        let records = &self.data[1..];
        if self.data.len() < COMPRESS_FROM_BYTES || records.len() > MAX_LOG_ROW_BYTES {
            return self.data.as_slice().into();
        }
        let mut out =
            Vec::with_capacity(12 + lz4_flex::block::get_maximum_output_size(records.len()));
        out.push(VERSION_LZ4);
        put_varint(&mut out, records.len() as u64);
        let header = out.len();
        out.resize(out.capacity(), 0);
        match lz4_flex::block::compress_into(records, &mut out[header..]) {
            Ok(n) if header + n <= self.data.len() - self.data.len() / 8 => {
                out.truncate(header + n);
                out.into()
            }
            _ => self.data.as_slice().into(),
        }
    }
}

/// The records of one row (offsets `first_offset..end_offset`) from `from` on, at most `max`
/// of them, appended to `out`. Data that does not hold exactly the row's records is an error.
pub(super) fn decode(
    topic: Topic,
    partition: u32,
    (first_offset, end_offset): (u64, u64),
    data: &[u8],
    from: u64,
    max: usize,
    out: &mut Vec<StoredRecord>,
) -> Result<(), LogError> {
    let mut b = data;
    let decompressed;
    match take(&mut b, 1)? {
        [VERSION] => {}
        [VERSION_LZ4] => {
            let len = usize::try_from(varint(&mut b)?)
                .ok()
                .filter(|&n| n <= MAX_LOG_ROW_BYTES)
                .ok_or_else(|| corrupt("a compressed row longer than a row may be"))?;
            let mut records = vec![0; len];
            match lz4_flex::block::decompress_into(b, &mut records) {
                Ok(n) if n == len => {}
                _ => {
                    return Err(corrupt(
                        "a compressed row does not decompress to its length",
                    ));
                }
            }
            decompressed = records;
            b = &decompressed;
        }
        [v] => {
            return Err(LogError::Storage(format!(
                "log batch of version {v}: this build reads versions {VERSION} and {VERSION_LZ4}; a newer build wrote it"
            )));
        }
        _ => unreachable!("took one byte"),
    }
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut offset = first_offset;
    while offset < end_offset && out.len() < max {
        let key_len = varint_len(&mut b)?;
        let key = take(&mut b, key_len)?;
        let ts = unzigzag(varint(&mut b)?);
        match varint_len(&mut b)? {
            0 if offset == first_offset => {
                return Err(corrupt(
                    "the row's first record refers to headers before it",
                ));
            }
            0 => {}
            n => headers = decode_headers(take(&mut b, n - 1)?)?,
        }
        let value_len = varint_len(&mut b)?;
        let value = take(&mut b, value_len)?;
        if offset >= from {
            let key = std::str::from_utf8(key)
                .map_err(|_| corrupt("a record key is not UTF-8"))?
                .to_owned();
            out.push(StoredRecord {
                topic,
                partition,
                offset,
                record: Arc::new(Record {
                    partition,
                    key,
                    value: value.to_vec(),
                    headers: headers.clone(),
                    timestamp_ms: ts,
                }),
            });
        }
        offset += 1;
    }
    if offset == end_offset && !b.is_empty() {
        return Err(corrupt("bytes after the row's last record"));
    }
    Ok(())
}

fn corrupt(what: &str) -> LogError {
    LogError::Storage(format!("corrupt log batch: {what}"))
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], LogError> {
    if b.len() < n {
        return Err(corrupt("a record runs past the row's end"));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(b: &mut &[u8]) -> Result<u64, LogError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let &[byte] = take(b, 1)? else {
            unreachable!("took one byte")
        };
        if shift == 63 && byte > 1 {
            return Err(corrupt("a varint overflows 64 bits"));
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("a varint is longer than 10 bytes"))
}

/// A varint that is a length: it must fit what is left of the row.
fn varint_len(b: &mut &[u8]) -> Result<usize, LogError> {
    let v = varint(b)?;
    usize::try_from(v)
        .ok()
        .filter(|&n| n <= b.len().saturating_add(1))
        .ok_or_else(|| corrupt("a length runs past the row's end"))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, headers: Vec<(String, Vec<u8>)>) -> Record {
        Record {
            partition: 3,
            key: format!("user-{i}é"),
            value: vec![i as u8; i],
            headers,
            timestamp_ms: [0, -1, i64::MIN, i64::MAX, 1_700_000_000_000][i % 5],
        }
    }

    fn schema(v: &[u8]) -> Vec<(String, Vec<u8>)> {
        vec![("schema".into(), v.to_vec()), ("empty".into(), Vec::new())]
    }

    #[test]
    fn a_batch_round_trips_and_a_read_from_its_middle_skips_the_rest() {
        let records: Vec<Record> = (0..40)
            .map(|i| record(i, if i < 20 { schema(b"a") } else { schema(b"b") }))
            .chain([record(40, Vec::new()), record(41, schema(b"a"))])
            .collect();
        let mut batch = Batch::new(100);
        for r in &records {
            batch.push(r);
        }
        assert_eq!((batch.count, batch.end_offset()), (42, 142));
        let mut out = Vec::new();
        decode(
            Topic::UserEvents,
            3,
            (100, 142),
            &batch.data,
            0,
            usize::MAX,
            &mut out,
        )
        .unwrap();
        let got: Vec<Record> = out.iter().map(|s| (*s.record).clone()).collect();
        assert_eq!(got, records);
        assert_eq!(out[41].offset, 141);
        let mut out = Vec::new();
        decode(
            Topic::UserEvents,
            3,
            (100, 142),
            &batch.data,
            125,
            5,
            &mut out,
        )
        .unwrap();
        let offsets: Vec<u64> = out.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, vec![125, 126, 127, 128, 129]);
        assert_eq!(*out[0].record, records[25]);
    }

    /// The records of `data`, a row of `count` records from offset 0.
    fn all(data: &[u8], count: u64) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        decode(
            Topic::Requests,
            3,
            (0, count),
            data,
            0,
            usize::MAX,
            &mut out,
        )?;
        Ok(out.iter().map(|s| (*s.record).clone()).collect())
    }

    #[test]
    fn a_long_row_is_stored_compressed_and_reads_back_the_same() {
        let records: Vec<Record> = (0..200)
            .map(|i| Record {
                value: format!("{{\"user\":\"u{i}\",\"event_type\":\"invoice.paid\"}}")
                    .into_bytes(),
                ..record(i % 7, schema(b"request"))
            })
            .collect();
        let mut batch = Batch::new(0);
        for r in &records {
            batch.push(r);
        }
        let stored = batch.stored();
        assert_eq!(stored[0], VERSION_LZ4);
        assert!(
            stored.len() * 2 < batch.data.len(),
            "{} of {} bytes",
            stored.len(),
            batch.data.len()
        );
        assert_eq!(all(&stored, 200).unwrap(), records);
        // A read from the middle of a compressed row.
        let mut out = Vec::new();
        decode(Topic::Requests, 3, (0, 200), &stored, 150, 3, &mut out).unwrap();
        let offsets: Vec<u64> = out.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, vec![150, 151, 152]);
        assert_eq!(*out[0].record, records[150]);
    }

    #[test]
    fn short_incompressible_and_oversized_rows_are_stored_as_they_are() {
        let mut short = Batch::new(0);
        short.push(&record(3, schema(b"x")));
        assert!(short.data.len() < COMPRESS_FROM_BYTES);
        assert_eq!(short.stored().as_ref(), short.data.as_slice());
        // Random bytes do not compress by an eighth.
        let mut noise = Batch::new(0);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let value: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        noise.push(&Record {
            value,
            ..record(1, Vec::new())
        });
        assert_eq!(noise.stored().as_ref(), noise.data.as_slice());
        // A single record beyond a row's bound keeps its row as it is (a reader bounds what it
        // decompresses by MAX_LOG_ROW_BYTES).
        let mut big = Batch::new(0);
        big.push(&Record {
            value: vec![b'a'; MAX_LOG_ROW_BYTES + 1],
            ..record(1, Vec::new())
        });
        assert_eq!(big.stored()[0], VERSION);
        assert_eq!(
            all(&big.stored(), 1).unwrap()[0].value.len(),
            MAX_LOG_ROW_BYTES + 1
        );
    }

    #[test]
    fn a_damaged_compressed_row_is_an_error_not_a_panic() {
        let mut batch = Batch::new(0);
        for i in 0..50 {
            batch.push(&record(i % 5 + 20, schema(b"x")));
        }
        let stored = batch.stored().into_owned();
        assert_eq!(stored[0], VERSION_LZ4);
        all(&stored, 50).unwrap();
        for cut in 1..stored.len() {
            assert!(all(&stored[..cut], 50).is_err(), "cut at {cut}");
        }
        let mut flipped = stored.clone();
        for i in 3..flipped.len() {
            flipped[i] ^= 0x5a;
            // Whatever a flipped byte decodes to, it is a result, not a panic.
            let _ = all(&flipped, 50);
            flipped[i] ^= 0x5a;
        }
        // The same block behind another declared length.
        let block = {
            let mut header = vec![VERSION_LZ4];
            put_varint(&mut header, (batch.data.len() - 1) as u64);
            &stored[header.len()..]
        };
        let declaring = |len: usize| {
            let mut row = vec![VERSION_LZ4];
            put_varint(&mut row, len as u64);
            row.extend_from_slice(block);
            row
        };
        all(&declaring(batch.data.len() - 1), 50).unwrap();
        // A declared length beyond a row's bound is refused before anything is allocated.
        let err = all(&declaring(MAX_LOG_ROW_BYTES + 1), 50).unwrap_err();
        assert!(err.to_string().contains("longer than a row"), "{err}");
        // A declared length the block does not fill.
        assert!(all(&declaring(batch.data.len()), 50).is_err());
    }

    #[test]
    fn a_batch_fills_at_its_record_or_byte_bound() {
        let small = record(1, Vec::new());
        let mut batch = Batch::new(0);
        while batch.fits(&small) {
            batch.push(&small);
        }
        assert_eq!(batch.count, MAX_LOG_ROW_RECORDS);
        let large = Record {
            value: vec![0; MAX_LOG_ROW_BYTES],
            ..record(1, Vec::new())
        };
        let mut big = Batch::new(0);
        assert!(big.fits(&large), "a row's first record always fits");
        big.push(&large);
        assert!(!big.fits(&small) && big.count == 1);
        let mut half = Batch::new(0);
        let half_row = Record {
            value: vec![0; MAX_LOG_ROW_BYTES / 2],
            ..record(1, Vec::new())
        };
        half.push(&half_row);
        assert!(half.fits(&small));
        assert!(
            !half.fits(&half_row),
            "a second half-row record would cross the bound"
        );
    }

    #[test]
    fn damaged_data_is_an_error_not_a_panic() {
        let mut batch = Batch::new(0);
        for i in 0..3 {
            batch.push(&record(i, schema(b"x")));
        }
        let whole =
            |data: &[u8]| decode(Topic::UserEvents, 3, (0, 3), data, 0, 10, &mut Vec::new());
        whole(&batch.data).unwrap();
        for cut in 0..batch.data.len() {
            assert!(whole(&batch.data[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = batch.data.clone();
        longer.push(0);
        assert!(whole(&longer).is_err(), "a byte after the last record");
        let mut newer = batch.data.clone();
        newer[0] = VERSION_LZ4 + 1;
        let err = whole(&newer).unwrap_err();
        assert!(err.to_string().contains("newer build"), "{err}");
        let mut long = vec![VERSION];
        long.extend_from_slice(&[0xff; 11]);
        assert!(whole(&long).is_err());
        // A first record that refers to headers before it.
        let no_headers = [VERSION, 1, b'k', 0, 0, 0];
        let err = decode(
            Topic::UserEvents,
            3,
            (0, 1),
            &no_headers,
            0,
            10,
            &mut Vec::new(),
        );
        assert!(err.unwrap_err().to_string().contains("first record"));
        // A varint whose tenth byte carries more than the 64th bit.
        let mut over = vec![VERSION];
        over.extend_from_slice(&[0xff; 9]);
        over.push(0x02);
        assert!(whole(&over).unwrap_err().to_string().contains("overflows"));
        // Key 0xff (not UTF-8), timestamp 0, no headers (4 bytes of count 0), an empty value.
        let bad_key = [VERSION, 1, 0xff, 0, 5, 0, 0, 0, 0, 0];
        let err = decode(
            Topic::UserEvents,
            3,
            (0, 1),
            &bad_key,
            0,
            10,
            &mut Vec::new(),
        );
        assert!(err.unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn zigzag_round_trips_the_extremes() {
        for v in [0, 1, -1, i64::MIN, i64::MAX, 1_700_000_000_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}

//! The Avro binary encoding of the few types Herald's schemas use, written by hand: longs and
//! ints as zig-zag varints, strings as a length and UTF-8 bytes, booleans as one byte, enums as
//! their symbol's index, `["null", T]` unions as a branch index then the value, and string
//! arrays as counted blocks ending with an empty one (negative block counts, which carry a byte
//! size, are read too). No intermediate value tree and no allocation beyond the decoded strings.

use crate::CoreError;

/// Appends Avro binary data to a buffer.
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    /// An enum symbol, by index.
    pub(crate) fn symbol(&mut self, index: usize) {
        self.long(index as i64);
    }

    /// `["null", "string"]`.
    pub(crate) fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.long(0),
            Some(s) => {
                self.long(1);
                self.str(s);
            }
        }
    }

    /// `["null", "long"]`.
    pub(crate) fn opt_long(&mut self, v: Option<i64>) {
        match v {
            None => self.long(0),
            Some(n) => {
                self.long(1);
                self.long(n);
            }
        }
    }

    /// `{"type": "array", "items": "long"}`: one block, then the end.
    pub(crate) fn longs(&mut self, items: &[i64]) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for n in items {
                self.long(*n);
            }
        }
        self.long(0);
    }

    /// `{"type": "array", "items": "string"}`: one block, then the end.
    pub(crate) fn strs(&mut self, items: &[String]) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for s in items {
                self.str(s);
            }
        }
        self.long(0);
    }
}

/// Reads Avro binary data; every error names the schema being read.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    schema: &'static str,
    /// Most bytes one string (or array) may claim: a corrupt length never allocates more.
    max_len: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(datum: &'a [u8], schema: &'static str, max_len: usize) -> Reader<'a> {
        Reader {
            rest: datum,
            schema,
            max_len,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> CoreError {
        CoreError::Corrupt {
            schema: self.schema,
            reason: reason.into(),
        }
    }

    pub(crate) fn long(&mut self) -> Result<i64, CoreError> {
        let mut z: u64 = 0;
        for (i, b) in self.rest.iter().enumerate() {
            if i == 10 {
                break;
            }
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == 9 && *b > 1 {
                    return Err(self.corrupt("a varint overflows 64 bits"));
                }
                self.rest = &self.rest[i + 1..];
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(self.corrupt(if self.rest.len() < 10 {
            "the data ends inside a number"
        } else {
            "a varint is longer than 10 bytes"
        }))
    }

    fn length(&mut self, what: &str) -> Result<usize, CoreError> {
        let n = self.long()?;
        if n < 0 {
            return Err(self.corrupt(format!("negative {what} length {n}")));
        }
        let n = n as usize;
        if n > self.max_len {
            return Err(self.corrupt(format!(
                "{what} of {n} bytes is over the {} byte limit",
                self.max_len
            )));
        }
        Ok(n)
    }

    pub(crate) fn str(&mut self) -> Result<String, CoreError> {
        let n = self.length("string")?;
        if self.rest.len() < n {
            return Err(self.corrupt("the data ends inside a string"));
        }
        let (bytes, rest) = self.rest.split_at(n);
        self.rest = rest;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("a string is not UTF-8"))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, CoreError> {
        match self.rest.split_first() {
            Some((0, rest)) => {
                self.rest = rest;
                Ok(false)
            }
            Some((1, rest)) => {
                self.rest = rest;
                Ok(true)
            }
            Some((b, _)) => Err(self.corrupt(format!("boolean byte {b}"))),
            None => Err(self.corrupt("the data ends inside a boolean")),
        }
    }

    /// An enum symbol's index, below `symbols`.
    pub(crate) fn symbol(&mut self, symbols: usize) -> Result<usize, CoreError> {
        let i = self.long()?;
        if i < 0 || i as usize >= symbols {
            return Err(self.corrupt(format!("enum index {i} of {symbols} symbols")));
        }
        Ok(i as usize)
    }

    fn branch(&mut self) -> Result<bool, CoreError> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.corrupt(format!("union branch {b} of 2"))),
        }
    }

    pub(crate) fn opt_str(&mut self) -> Result<Option<String>, CoreError> {
        if self.branch()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn opt_long(&mut self) -> Result<Option<i64>, CoreError> {
        if self.branch()? {
            self.long().map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn strs(&mut self) -> Result<Vec<String>, CoreError> {
        let mut out = Vec::new();
        self.blocks(&mut out, |r| r.str())?;
        Ok(out)
    }

    pub(crate) fn longs(&mut self) -> Result<Vec<i64>, CoreError> {
        let mut out = Vec::new();
        self.blocks(&mut out, |r| r.long())?;
        Ok(out)
    }

    /// An array of records, each read by `item`.
    pub(crate) fn array<T>(
        &mut self,
        item: impl Fn(&mut Self) -> Result<T, CoreError>,
    ) -> Result<Vec<T>, CoreError> {
        let mut out = Vec::new();
        self.blocks(&mut out, item)?;
        Ok(out)
    }

    /// The blocks of an array, each item read by `item` (each takes at least one byte).
    fn blocks<T>(
        &mut self,
        out: &mut Vec<T>,
        item: impl Fn(&mut Self) -> Result<T, CoreError>,
    ) -> Result<(), CoreError> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                count = count
                    .checked_neg()
                    .ok_or_else(|| self.corrupt("array block count overflows"))?;
                self.long()?;
            }
            let count = count as usize;
            if count > self.max_len || out.len() + count > self.max_len {
                return Err(self.corrupt(format!("an array of over {} items", self.max_len)));
            }
            // Each item takes at least one byte: a count beyond the data is corrupt.
            if count > self.rest.len() {
                return Err(self.corrupt("the data ends inside an array"));
            }
            out.reserve(count);
            for _ in 0..count {
                out.push(item(self)?);
            }
        }
    }

    /// The datum must end here.
    pub(crate) fn finish(self) -> Result<(), CoreError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt(format!("{} trailing bytes", self.rest.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(v: i64) -> (Vec<u8>, i64) {
        let mut buf = Vec::new();
        Writer { buf: &mut buf }.long(v);
        let got = Reader::new(&buf, "t", 100).long().unwrap();
        (buf, got)
    }

    #[test]
    fn longs_are_zigzag_varints() {
        assert_eq!(round(0).0, [0]);
        assert_eq!(round(-1).0, [1]);
        assert_eq!(round(1).0, [2]);
        assert_eq!(round(-64).0, [0x7f]);
        assert_eq!(round(64).0, [0x80, 0x01]);
        for v in [i64::MIN, i64::MIN + 1, -300, 300, i64::MAX - 1, i64::MAX] {
            assert_eq!(round(v).1, v);
        }
        assert_eq!(round(i64::MAX).0.len(), 10);
    }

    #[test]
    fn bad_data_is_an_error() {
        let r = |b: &[u8]| Reader::new(b, "t", 100).long();
        assert!(r(&[0x80]).is_err(), "ends inside");
        assert!(r(&[0xff; 11]).is_err(), "too long");
        assert!(r(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert!(
            Reader::new(&[0x80, 0x08], "t", 100).str().is_err(),
            "over the limit"
        );
        assert!(Reader::new(&[0x06, b'a'], "t", 100).str().is_err(), "short");
        assert!(
            Reader::new(&[0x02, 0xff], "t", 100).str().is_err(),
            "not UTF-8"
        );
        assert!(
            Reader::new(&[0x7f], "t", 100).strs().is_err(),
            "negative count, no size"
        );
        assert!(
            Reader::new(&[0x04], "t", 100).opt_str().is_err(),
            "branch 2"
        );
        assert!(
            Reader::new(&[2], "t", 100).bool().is_err(),
            "boolean byte 2"
        );
    }
}

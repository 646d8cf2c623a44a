//! How record headers are stored: a count, then each name and value with its length (all
//! lengths u32 little-endian), in one BLOB column.

use herald_ports::log::LogError;

pub(super) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + headers
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

pub(super) fn decode_headers(mut b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, LogError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], LogError> {
        if b.len() < n {
            return Err(LogError::Storage("corrupt record headers".into()));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> Result<usize, LogError> {
        let raw = take(b, 4)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let n = len(&mut b)?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let kl = len(&mut b)?;
        let k = String::from_utf8(take(&mut b, kl)?.to_vec())
            .map_err(|_| LogError::Storage("corrupt header name".into()))?;
        let vl = len(&mut b)?;
        out.push((k, take(&mut b, vl)?.to_vec()));
    }
    if !b.is_empty() {
        return Err(LogError::Storage(
            "corrupt record headers: bytes after the last".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_truncation_is_an_error() {
        let headers = vec![
            ("traceparent".to_owned(), b"00-abc".to_vec()),
            ("empty".to_owned(), Vec::new()),
        ];
        let bytes = encode_headers(&headers);
        assert_eq!(decode_headers(&bytes).unwrap(), headers);
        assert_eq!(decode_headers(&encode_headers(&[])).unwrap(), Vec::new());
        assert!(decode_headers(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_headers(&longer).is_err());
    }
}

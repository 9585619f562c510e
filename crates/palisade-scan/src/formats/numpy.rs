//! NumPy `.npy`: a strict header parse; object arrays are pickles and go to the pickle VM; other
//! arrays must hold exactly `prod(shape) * itemsize` bytes.

use std::io::{BufRead, BufReader, Read};

use crate::blob::{Blob, BlobReader};
use crate::detect::{self, Ctx};
use crate::pickle;
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

/// The parsed header of an `.npy`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) descr: String,
    pub(crate) shape: Vec<u64>,
    /// Bytes taken by magic, version, length and header.
    pub(crate) header_len: u64,
}

impl Header {
    /// Whether the dtype holds Python objects (pickled).
    pub(crate) fn is_object(&self) -> bool {
        self.descr.contains('O')
    }
}

/// Scans an `.npy` file.
pub(crate) fn scan_npy_blob(blob: &dyn Blob, sink: &mut Sink, ctx: &Ctx<'_>) {
    let mut r = BufReader::with_capacity(1 << 16, BlobReader::new(blob, 0, blob.len()));
    scan_npy_stream(&mut r, Some(blob.len()), sink, ctx);
}

/// Scans an `.npy` from a stream whose total length is `total` (when known).
pub(crate) fn scan_npy_stream(
    r: &mut dyn BufRead,
    total: Option<u64>,
    sink: &mut Sink,
    ctx: &Ctx<'_>,
) {
    let h = match read_header(r) {
        Ok(h) => h,
        Err(e) => {
            sink.error(FindingKind::Unparsable, Some(0), format!("npy header: {e}"));
            return;
        }
    };
    if h.is_object() {
        sink.push(
            Severity::Info,
            FindingKind::MalformedTensors,
            Some(0),
            format!(
                "object array (dtype {}): its data is a pickle (np.load needs allow_pickle=True)",
                h.descr
            ),
            Vec::new(),
        );
        let res = pickle::scan_stream(r, sink, &ctx.policy);
        // Offsets from the VM are relative to the pickle, which starts after the header.
        detect::scan_nested(res.nested, sink, ctx, 1);
        return;
    }
    let Some(total) = total else { return };
    let Some(item) = itemsize(&h.descr) else {
        sink.error(
            FindingKind::MalformedTensors,
            Some(0),
            format!("npy dtype {:?} not understood", h.descr),
        );
        return;
    };
    let expected = h.shape.iter().try_fold(item, |acc, &d| acc.checked_mul(d));
    let have = total.saturating_sub(h.header_len);
    match expected {
        None => sink.error(
            FindingKind::MalformedTensors,
            Some(0),
            "npy shape × itemsize overflows",
        ),
        Some(n) if n > have => sink.error(
            FindingKind::MalformedTensors,
            Some(h.header_len),
            format!("npy data truncated: {have} bytes of {n}"),
        ),
        Some(n) if n < have => sink.push(
            Severity::Suspicious,
            FindingKind::ParserDifferential,
            Some(h.header_len + n),
            format!("{} bytes after the array data", have - n),
            Vec::new(),
        ),
        Some(_) => {}
    }
}

/// Size in bytes of one element of a simple dtype descr (`<f4`, `|b1`, `<U10`, `|S5`, `<M8[ns]`).
pub(crate) fn itemsize(descr: &str) -> Option<u64> {
    let d = descr.trim_start_matches(['<', '>', '|', '=']);
    let mut chars = d.chars();
    let kind = chars.next()?;
    let rest: String = chars.take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = if rest.is_empty() {
        1
    } else {
        rest.parse().ok()?
    };
    match kind {
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'a' | 'V' | 'M' | 'm' => Some(n),
        '?' => Some(1),
        'U' => n.checked_mul(4),
        _ => None,
    }
}

/// Reads and parses the header, leaving `r` at the start of the data.
pub(crate) fn read_header(r: &mut dyn BufRead) -> Result<Header, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|_| "truncated".to_string())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("bad magic".into());
    }
    let (len, fixed) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| "truncated".to_string())?;
            (u64::from(u16::from_le_bytes(b)), 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| "truncated".to_string())?;
            (u64::from(u32::from_le_bytes(b)), 12u64)
        }
        v => return Err(format!("unsupported version {v}")),
    };
    if len > 1 << 20 {
        return Err(format!("header of {len} bytes is too long"));
    }
    let mut text = Vec::new();
    r.take(len)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 != len {
        return Err("truncated".into());
    }
    let text = String::from_utf8(text).map_err(|_| "header is not UTF-8".to_string())?;
    let (descr, shape) = parse_dict(&text)?;
    Ok(Header {
        descr,
        shape,
        header_len: fixed + len,
    })
}

/// Parses the header dict literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_dict(t: &str) -> Result<(String, Vec<u64>), String> {
    let t = t.trim();
    let body = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or("header is not a dict")?;
    let descr_at = body.find("'descr':").ok_or("no descr")?;
    let after = body[descr_at + 8..].trim_start();
    let descr = if let Some(rest) = after.strip_prefix('\'') {
        rest.split('\'').next().ok_or("bad descr")?.to_string()
    } else if after.starts_with('[') {
        // A structured dtype: keep the whole list; object fields show up as 'O'.
        let end = matching_bracket(after).ok_or("bad structured descr")?;
        after[..=end].to_string()
    } else {
        return Err("bad descr".into());
    };
    let shape_at = body.find("'shape':").ok_or("no shape")?;
    let after = body[shape_at + 8..].trim_start();
    let inner = after
        .strip_prefix('(')
        .and_then(|x| x.split(')').next())
        .ok_or("bad shape")?;
    let mut shape = Vec::new();
    for p in inner.split(',') {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        shape.push(
            p.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| format!("bad shape dimension {p:?}"))?,
        );
    }
    if !body.contains("'fortran_order':") {
        return Err("no fortran_order".into());
    }
    Ok((descr, shape))
}

fn matching_bracket(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        let (d, s) =
            parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }").unwrap();
        assert_eq!((d.as_str(), s), ("<f4", vec![2, 3]));
        let (d, s) = parse_dict("{'descr': '|O', 'fortran_order': False, 'shape': (), }").unwrap();
        assert_eq!((d.as_str(), s), ("|O", vec![]));
        assert!(parse_dict("{'descr': '<f4'}").is_err());
        assert_eq!(itemsize("<U10"), Some(40));
        assert_eq!(itemsize("|b1"), Some(1));
        assert_eq!(itemsize("|O"), None);
    }
}

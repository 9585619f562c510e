//! NumPy `.npy` and `.npz` files: read and write.
//!
//! Supported dtypes: `f4`, `f8`, `u1`, `b1`, `i1`/`i2`/`u2`/`i4` (read as i32), `u4`/`i8` (read as
//! i64), either byte order, C or Fortran order. Object arrays (`O`, which hold pickles) and
//! structured dtypes are refused, never interpreted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::DataError;
use crate::io::{MAX_FILE_BYTES, hex_prefix};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest `.npy` header accepted.
const MAX_HEADER: usize = 1 << 20;
/// Most arrays read from one `.npz`.
const MAX_ENTRIES: usize = 4096;

/// An array read from (or to be written to) a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyArray {
    /// `f4`.
    F32(ArrayD<f32>),
    /// `f8`.
    F64(ArrayD<f64>),
    /// `u1`.
    U8(ArrayD<u8>),
    /// `i1`, `i2`, `u2`, `i4`.
    I32(ArrayD<i32>),
    /// `u4`, `i8`.
    I64(ArrayD<i64>),
    /// `b1`.
    Bool(ArrayD<bool>),
}

impl NpyArray {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32(a) => a.shape(),
            NpyArray::F64(a) => a.shape(),
            NpyArray::U8(a) => a.shape(),
            NpyArray::I32(a) => a.shape(),
            NpyArray::I64(a) => a.shape(),
            NpyArray::Bool(a) => a.shape(),
        }
    }

    /// The NumPy dtype name.
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyArray::F32(_) => "float32",
            NpyArray::F64(_) => "float64",
            NpyArray::U8(_) => "uint8",
            NpyArray::I32(_) => "int32",
            NpyArray::I64(_) => "int64",
            NpyArray::Bool(_) => "bool",
        }
    }

    /// The values as f32 (integers and booleans converted; f64 rounded).
    pub fn to_f32(&self) -> ArrayD<f32> {
        match self {
            NpyArray::F32(a) => a.clone(),
            NpyArray::F64(a) => a.mapv(|v| v as f32),
            NpyArray::U8(a) => a.mapv(f32::from),
            NpyArray::I32(a) => a.mapv(|v| v as f32),
            NpyArray::I64(a) => a.mapv(|v| v as f32),
            NpyArray::Bool(a) => a.mapv(|v| f32::from(u8::from(v))),
        }
    }

    /// The values as class labels: non-negative integers (integer dtypes, or floats that are
    /// whole numbers). Errors name the first value that is not a label.
    pub fn to_labels(&self) -> Result<Vec<usize>, DataError> {
        let bad = |v: String| DataError::Invalid(format!("{v} is not a class label"));
        let as_label = |v: f64| -> Result<usize, DataError> {
            if v >= 0.0 && v.fract() == 0.0 && v < 1e9 {
                Ok(v as usize)
            } else {
                Err(bad(v.to_string()))
            }
        };
        match self {
            NpyArray::U8(a) => Ok(a.iter().map(|&v| usize::from(v)).collect()),
            NpyArray::I32(a) => a
                .iter()
                .map(|&v| usize::try_from(v).map_err(|_| bad(v.to_string())))
                .collect(),
            NpyArray::I64(a) => a
                .iter()
                .map(|&v| usize::try_from(v).map_err(|_| bad(v.to_string())))
                .collect(),
            NpyArray::F32(a) => a.iter().map(|&v| as_label(f64::from(v))).collect(),
            NpyArray::F64(a) => a.iter().map(|&v| as_label(v)).collect(),
            NpyArray::Bool(a) => Ok(a.iter().map(|&v| usize::from(v)).collect()),
        }
    }
}

/// The parsed header dictionary.
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

/// Parses the Python-literal header `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(path: &Path, h: &str) -> Result<Header, DataError> {
    let err = |m: &str| DataError::format(path, format!("npy header: {m}"));
    let body = h
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.trim_end().strip_suffix('}'))
        .ok_or_else(|| err("not a dictionary"))?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or_else(|| err("expected a quoted key"))?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| err("expected ':'"))?
            .trim_start();
        rest = match key {
            "descr" => {
                if after.starts_with('[') {
                    return Err(DataError::unsupported(path, "structured dtypes"));
                }
                let (v, r) = quoted(after).ok_or_else(|| err("descr must be a string"))?;
                descr = Some(v.to_string());
                r
            }
            "fortran_order" => {
                if let Some(r) = after.strip_prefix("True") {
                    fortran = Some(true);
                    r
                } else if let Some(r) = after.strip_prefix("False") {
                    fortran = Some(false);
                    r
                } else {
                    return Err(err("fortran_order must be True or False"));
                }
            }
            "shape" => {
                let inner = after
                    .strip_prefix('(')
                    .ok_or_else(|| err("shape must be a tuple"))?;
                let close = inner.find(')').ok_or_else(|| err("unclosed shape tuple"))?;
                let dims = inner[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| err("bad dimension"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                shape = Some(dims);
                &inner[close + 1..]
            }
            other => return Err(err(&format!("unknown key '{other}'"))),
        }
        .trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Header {
        descr: descr.ok_or_else(|| err("no descr"))?,
        fortran: fortran.ok_or_else(|| err("no fortran_order"))?,
        shape: shape.ok_or_else(|| err("no shape"))?,
    })
}

/// A single- or double-quoted string at the start of `s`, and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(q)? + 1;
    Some((&s[1..end], &s[end + 1..]))
}

/// Parses `.npy` bytes; `path` names the source in errors.
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray, DataError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            format: "NPY",
            found: hex_prefix(bytes),
        });
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(DataError::Truncated {
                    path: path.to_path_buf(),
                    expected: 12,
                    found: bytes.len() as u64,
                });
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(DataError::unsupported(
                path,
                format!("npy format version {v}"),
            ));
        }
    };
    if hlen > MAX_HEADER {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            message: format!("npy header of {hlen} bytes"),
        });
    }
    let end = start + hlen;
    if bytes.len() < end {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: end as u64,
            found: bytes.len() as u64,
        });
    }
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| DataError::format(path, "npy header is not text"))?;
    let h = parse_header(path, text)?;
    let descr = h.descr.as_str();
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    if code.starts_with('O') {
        return Err(DataError::unsupported(
            path,
            "object arrays (they hold pickles); save a numeric dtype",
        ));
    }
    let big = order == '>';
    let width = match code {
        "f4" | "i4" | "u4" => 4,
        "f8" | "i8" => 8,
        "u1" | "i1" | "b1" => 1,
        "i2" | "u2" => 2,
        other => return Err(DataError::unsupported(path, format!("dtype '{other}'"))),
    };
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| DataError::format(path, format!("shape {:?} overflows", h.shape)))?;
    let body = &bytes[end..];
    if body.len() < count {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: count as u64,
            found: body.len() as u64,
        });
    }
    if body.len() > count {
        return Err(DataError::format(
            path,
            format!("{} bytes after the array data", body.len() - count),
        ));
    }
    let w = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        if big {
            b[..c.len()].reverse();
        }
        b
    };
    // Row-major shape to read into; Fortran order is read reversed then transposed.
    let read_shape: Vec<usize> = if h.fortran {
        h.shape.iter().rev().copied().collect()
    } else {
        h.shape.clone()
    };
    fn arr<T: Clone>(
        path: &Path,
        shape: &[usize],
        v: Vec<T>,
        fortran: bool,
    ) -> Result<ArrayD<T>, DataError> {
        let a = ArrayD::from_shape_vec(IxDyn(shape), v)
            .map_err(|e| DataError::shape(path, e.to_string()))?;
        Ok(if fortran {
            a.reversed_axes().as_standard_layout().into_owned()
        } else {
            a
        })
    }
    let f = h.fortran;
    let s = &read_shape;
    Ok(match code {
        "f4" => NpyArray::F32(arr(
            path,
            s,
            body.chunks_exact(4)
                .map(|c| {
                    let b = w(c);
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                })
                .collect(),
            f,
        )?),
        "f8" => NpyArray::F64(arr(
            path,
            s,
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes(w(c)))
                .collect(),
            f,
        )?),
        "u1" => NpyArray::U8(arr(path, s, body.to_vec(), f)?),
        "b1" => NpyArray::Bool(arr(path, s, body.iter().map(|&b| b != 0).collect(), f)?),
        "i1" => NpyArray::I32(arr(
            path,
            s,
            body.iter().map(|&b| i32::from(b as i8)).collect(),
            f,
        )?),
        "i2" => NpyArray::I32(arr(
            path,
            s,
            body.chunks_exact(2)
                .map(|c| {
                    let b = w(c);
                    i32::from(i16::from_le_bytes([b[0], b[1]]))
                })
                .collect(),
            f,
        )?),
        "u2" => NpyArray::I32(arr(
            path,
            s,
            body.chunks_exact(2)
                .map(|c| {
                    let b = w(c);
                    i32::from(u16::from_le_bytes([b[0], b[1]]))
                })
                .collect(),
            f,
        )?),
        "i4" => NpyArray::I32(arr(
            path,
            s,
            body.chunks_exact(4)
                .map(|c| {
                    let b = w(c);
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]])
                })
                .collect(),
            f,
        )?),
        "u4" => NpyArray::I64(arr(
            path,
            s,
            body.chunks_exact(4)
                .map(|c| {
                    let b = w(c);
                    i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                })
                .collect(),
            f,
        )?),
        _ => NpyArray::I64(arr(
            path,
            s,
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes(w(c)))
                .collect(),
            f,
        )?),
    })
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray, DataError> {
    let bytes = crate::io::read_maybe_gz(path, MAX_FILE_BYTES)?;
    parse_npy(path, &bytes)
}

/// The `.npy` (version 1.0, little-endian, C order) encoding of `a`.
pub fn npy_bytes(a: &NpyArray) -> Vec<u8> {
    let (descr, data): (&str, Vec<u8>) = match a {
        NpyArray::F32(a) => ("<f4", a.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyArray::F64(a) => ("<f8", a.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyArray::U8(a) => ("|u1", a.iter().copied().collect()),
        NpyArray::I32(a) => ("<i4", a.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyArray::I64(a) => ("<i8", a.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyArray::Bool(a) => ("|b1", a.iter().map(|&v| u8::from(v)).collect()),
    };
    let dims: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, header ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Writes `a` as a `.npy` file (atomically).
pub fn write_npy(path: &Path, a: &NpyArray) -> Result<(), DataError> {
    crate::io::write_atomic(path, &npy_bytes(a))
}

/// Reads every array of a `.npz` archive, by name (without the `.npy` suffix).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| DataError::format(path, format!("not a valid npz (zip) archive: {e}")))?;
    if zip.len() > MAX_ENTRIES {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            message: format!("{} arrays in one archive", zip.len()),
        });
    }
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| DataError::format(path, format!("npz entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| DataError::format(path, format!("npz entry {i}: {e}")))?
            .into_owned();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::new();
        let limit = MAX_FILE_BYTES - total;
        (&mut entry)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::format(path, format!("npz entry '{name}': {e}")))?;
        total += bytes.len() as u64;
        if total > MAX_FILE_BYTES {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                message: format!("more than {MAX_FILE_BYTES} bytes decompressed"),
            });
        }
        let inner = path.join(&name);
        out.insert(key, parse_npy(&inner, &bytes)?);
    }
    Ok(out)
}

/// Writes arrays into a `.npz` archive (stored, uncompressed; atomically).
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<(), DataError> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zw = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(false);
        for (name, a) in arrays {
            zw.start_file(format!("{name}.npy"), opts)
                .map_err(|e| DataError::format(path, e.to_string()))?;
            zw.write_all(&npy_bytes(a))
                .map_err(|e| DataError::io(path, e))?;
        }
        zw.finish()
            .map_err(|e| DataError::format(path, e.to_string()))?;
    }
    crate::io::write_atomic(path, &buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn p() -> &'static Path {
        Path::new("t.npy")
    }

    #[test]
    fn round_trips_every_written_dtype() {
        let arrays = [
            NpyArray::F32(array![[1.5f32, -2.0, 3.25], [0.0, 1e-3, 7.0]].into_dyn()),
            NpyArray::F64(array![1.0f64, 2.5].into_dyn()),
            NpyArray::U8(array![[[1u8, 2], [3, 255]]].into_dyn()),
            NpyArray::I32(array![-1i32, 7].into_dyn()),
            NpyArray::I64(array![[i64::MIN], [42]].into_dyn()),
            NpyArray::Bool(array![true, false].into_dyn()),
            NpyArray::F32(ArrayD::zeros(IxDyn(&[0, 3]))),
        ];
        for a in &arrays {
            let b = npy_bytes(a);
            assert_eq!((b.len() - b.len() % 64) % 64, 0);
            assert_eq!(&parse_npy(p(), &b).unwrap(), a);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        write_npz(&path, &[("x", &arrays[0]), ("y", &arrays[4])]).unwrap();
        let m = read_npz(&path).unwrap();
        assert_eq!(m["x"], arrays[0]);
        assert_eq!(m["y"], arrays[4]);
    }

    fn with_header(h: &str, data: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn reads_numpy_variants() {
        // Big-endian int64 in Fortran order: [[1, 2, 3], [4, 5, 6]] stored column by column.
        let vals: Vec<u8> = [1i64, 4, 2, 5, 3, 6]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let a = parse_npy(
            p(),
            &with_header(
                "{'descr': '>i8', 'fortran_order': True, 'shape': (2, 3), }\n",
                &vals,
            ),
        )
        .unwrap();
        assert_eq!(a, NpyArray::I64(array![[1i64, 2, 3], [4, 5, 6]].into_dyn()));
        assert_eq!(a.to_labels().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        // A scalar (shape ()).
        let s = parse_npy(
            p(),
            &with_header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                &2.5f32.to_le_bytes(),
            ),
        )
        .unwrap();
        assert_eq!(s.shape(), &[] as &[usize]);
        assert!(
            NpyArray::F32(array![0.5f32].into_dyn())
                .to_labels()
                .is_err()
        );
    }

    #[test]
    fn refuses_objects_and_malformed_files() {
        let obj = with_header(
            "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
            b"\x80\x04N.",
        );
        assert!(matches!(
            parse_npy(p(), &obj),
            Err(DataError::Unsupported { .. })
        ));
        let structured = with_header(
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        assert!(matches!(
            parse_npy(p(), &structured),
            Err(DataError::Unsupported { .. })
        ));
        assert!(matches!(
            parse_npy(p(), b"PK\x03\x04 not npy"),
            Err(DataError::BadMagic { .. })
        ));
        let short = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
            &[0; 8],
        );
        assert!(matches!(
            parse_npy(p(), &short),
            Err(DataError::Truncated {
                expected: 16,
                found: 8,
                ..
            })
        ));
        let huge = with_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999, 99999999999), }",
            &[],
        );
        assert!(parse_npy(p(), &huge).is_err());
        let mut cut = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        cut.truncate(20);
        assert!(matches!(
            parse_npy(p(), &cut),
            Err(DataError::Truncated { .. })
        ));
        for h in [
            "{'descr': '<f4'}",
            "not a dict",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}",
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}",
        ] {
            assert!(parse_npy(p(), &with_header(h, &[0; 8])).is_err(), "{h}");
        }
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.npz");
        std::fs::write(&bad, b"PK\x03\x04garbage").unwrap();
        assert!(read_npz(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_npy(p(), &bytes);
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&bytes);
            let _ = parse_npy(p(), &b);
        }
    }
}

//! NPY (format 1.0) encoding of little-endian float32 arrays, C order.

use crate::ReportError;

/// Encodes `data` with `shape` as an `.npy` file.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, ReportError> {
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(data.len()) {
        return Err(ReportError::Shape {
            shape: shape.to_vec(),
            len: data.len(),
        });
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    let hl = u16::try_from(header.len()).map_err(|_| ReportError::Shape {
        shape: shape.to_vec(),
        len: data.len(),
    })?;
    out.extend_from_slice(&hl.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let b = npy_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(h.contains("'shape': (2, 3)") && h.ends_with('\n'));
        assert_eq!(b.len(), 10 + hl + 24);
        assert_eq!(&b[10 + hl..10 + hl + 4], &1.0f32.to_le_bytes());
        assert!(npy_f32(&[2, 2], &[1.0]).is_err());
        let one = npy_f32(&[3], &[0.0; 3]).unwrap();
        assert!(
            std::str::from_utf8(&one[10..])
                .unwrap_or("")
                .contains("(3,)")
                || one.windows(4).any(|w| w == b"(3,)")
        );
    }
}

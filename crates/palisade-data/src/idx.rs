//! IDX files (MNIST, Fashion-MNIST, EMNIST), raw or gzip-compressed.
//!
//! Layout: two zero bytes, a dtype byte, the number of dimensions, one big-endian `u32` per
//! dimension, then the data, big-endian, row-major.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::io::{MAX_FILE_BYTES, hex_prefix, read_maybe_gz};
use crate::{DataError, Dataset, TrainTest};

/// The values of an IDX file.
#[derive(Debug, Clone, PartialEq)]
pub enum IdxData {
    /// `0x08`: unsigned bytes (MNIST images and labels).
    U8(Vec<u8>),
    /// Any other dtype (`i8`, `i16`, `i32`, `f32`, `f64`), converted to f32.
    F32(Vec<f32>),
}

/// A parsed IDX file.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: IdxData,
}

/// Parses IDX bytes (already decompressed); `path` names the source in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray, DataError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            format: "IDX",
            found: hex_prefix(bytes),
        });
    }
    let (dtype, ndim) = (bytes[2], usize::from(bytes[3]));
    let width = match dtype {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        other => {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                format: "IDX",
                found: format!("dtype 0x{other:02x}"),
            });
        }
    };
    if ndim == 0 {
        return Err(DataError::format(path, "IDX file with zero dimensions"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header as u64,
            found: bytes.len() as u64,
        });
    }
    let shape: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| DataError::format(path, format!("dimensions {shape:?} overflow")))?;
    let body = &bytes[header..];
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
            format!(
                "{} bytes of data after the {count} the header announces",
                body.len() - count
            ),
        ));
    }
    let data = match dtype {
        0x08 => IdxData::U8(body.to_vec()),
        0x09 => IdxData::F32(body.iter().map(|&b| f32::from(b as i8)).collect()),
        0x0B => IdxData::F32(
            body.chunks_exact(2)
                .map(|c| f32::from(i16::from_be_bytes([c[0], c[1]])))
                .collect(),
        ),
        0x0C => IdxData::F32(
            body.chunks_exact(4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
        ),
        0x0D => IdxData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        _ => IdxData::F32(
            body.chunks_exact(8)
                .map(|c| {
                    f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        ),
    };
    Ok(IdxArray { shape, data })
}

/// Reads an IDX file, gzip-compressed or not.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bytes = read_maybe_gz(path, MAX_FILE_BYTES)?;
    parse_idx(path, &bytes)
}

/// Writes an unsigned-byte IDX file (uncompressed); used to make small fixtures.
pub fn write_idx_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<(), DataError> {
    let n: usize = shape.iter().product();
    if n != data.len() || shape.is_empty() || shape.len() > 255 {
        return Err(DataError::Invalid(format!(
            "{} values for IDX shape {shape:?}",
            data.len()
        )));
    }
    let mut out = vec![0, 0, 0x08, shape.len() as u8];
    for &d in shape {
        let d = u32::try_from(d)
            .map_err(|_| DataError::Invalid(format!("dimension {d} exceeds u32")))?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    crate::io::write_atomic(path, &out)
}

/// Reads an image file (`[N, rows, cols]`, u8) and a label file (`[N]`, u8) into a dataset of
/// `[N, 1, rows, cols]` pixels scaled to `[0, 1]`. Classes are `0..=max label` (at least
/// `min_classes`), named by their digits.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    min_classes: usize,
) -> Result<Dataset, DataError> {
    idx_pair_dataset(
        images,
        read_idx(images)?,
        labels,
        read_idx(labels)?,
        min_classes,
    )
}

/// Like [`load_idx_pair`], from the bytes of the two files (raw or gzip); `name` names them in
/// errors. Used for data embedded in a binary.
pub fn idx_pair_from_bytes(
    name: &str,
    images: &[u8],
    labels: &[u8],
    min_classes: usize,
) -> Result<Dataset, DataError> {
    let (ip, lp) = (
        PathBuf::from(format!("{name}:images")),
        PathBuf::from(format!("{name}:labels")),
    );
    let img = parse_idx(&ip, &crate::io::maybe_gunzip(&ip, images, MAX_FILE_BYTES)?)?;
    let lab = parse_idx(&lp, &crate::io::maybe_gunzip(&lp, labels, MAX_FILE_BYTES)?)?;
    idx_pair_dataset(&ip, img, &lp, lab, min_classes)
}

fn idx_pair_dataset(
    images: &Path,
    img: IdxArray,
    labels: &Path,
    lab: IdxArray,
    min_classes: usize,
) -> Result<Dataset, DataError> {
    let IdxData::U8(pixels) = img.data else {
        return Err(DataError::unsupported(
            images,
            "image IDX files must hold unsigned bytes",
        ));
    };
    let IdxData::U8(ys) = lab.data else {
        return Err(DataError::unsupported(
            labels,
            "label IDX files must hold unsigned bytes",
        ));
    };
    if img.shape.len() != 3 {
        return Err(DataError::shape(
            images,
            format!("images must be [N, rows, cols], found {:?}", img.shape),
        ));
    }
    if lab.shape.len() != 1 || lab.shape[0] != img.shape[0] {
        return Err(DataError::shape(
            labels,
            format!("labels {:?} for {} images", lab.shape, img.shape[0]),
        ));
    }
    let (n, r, c) = (img.shape[0], img.shape[1], img.shape[2]);
    let x = ArrayD::from_shape_vec(
        IxDyn(&[n, 1, r, c]),
        pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
    )
    .map_err(|e| DataError::shape(images, e.to_string()))?;
    let y: Vec<usize> = ys.iter().map(|&v| usize::from(v)).collect();
    let classes = y.iter().map(|&v| v + 1).max().unwrap_or(0).max(min_classes);
    let mut d = Dataset::new(x, y, (0..classes).map(|c| c.to_string()).collect())?;
    d.input_range = Some((0.0, 1.0));
    Ok(d)
}

fn find(dir: &Path, stems: &[&str]) -> Result<PathBuf, DataError> {
    for stem in stems {
        for ext in ["", ".gz"] {
            let p = dir.join(format!("{stem}{ext}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DataError::io(
        dir.join(stems[0]),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {}[.gz] in this IDX folder", stems[0]),
        ),
    ))
}

/// Loads an MNIST-style folder: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
/// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]` (the `.` spelling
/// `train-images.idx3-ubyte` is accepted too). Both parts get the same classes.
pub fn load_idx_dir(dir: &Path) -> Result<TrainTest, DataError> {
    if !dir.is_dir() {
        return Err(DataError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let part = |p: &str| -> Result<Dataset, DataError> {
        let images = find(
            dir,
            &[
                &format!("{p}-images-idx3-ubyte"),
                &format!("{p}-images.idx3-ubyte"),
            ],
        )?;
        let labels = find(
            dir,
            &[
                &format!("{p}-labels-idx1-ubyte"),
                &format!("{p}-labels.idx1-ubyte"),
            ],
        )?;
        load_idx_pair(&images, &labels, 0)
    };
    let mut train = part("train")?;
    let mut test = part("t10k")?;
    if train.sample_shape() != test.sample_shape() {
        return Err(DataError::shape(
            dir,
            format!(
                "train images are {:?}, test images {:?}",
                train.sample_shape(),
                test.sample_shape()
            ),
        ));
    }
    let classes = train.num_classes().max(test.num_classes());
    for d in [&mut train, &mut test] {
        d.class_names = (0..classes).map(|c| c.to_string()).collect();
    }
    Ok(TrainTest { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(shape: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, shape.len() as u8];
        for d in shape {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn fixture(dir: &Path, compress: bool) {
        let img: Vec<u8> = (0..3 * 2 * 2).map(|i| (i * 20) as u8).collect();
        let files = [
            ("train-images-idx3-ubyte", idx_bytes(&[3, 2, 2], &img)),
            ("train-labels-idx1-ubyte", idx_bytes(&[3], &[0, 2, 1])),
            ("t10k-images-idx3-ubyte", idx_bytes(&[1, 2, 2], &img[..4])),
            ("t10k-labels-idx1-ubyte", idx_bytes(&[1], &[3])),
        ];
        for (name, b) in files {
            if compress {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&b)).unwrap();
            } else {
                std::fs::write(dir.join(name), b).unwrap();
            }
        }
    }

    #[test]
    fn loads_raw_and_gzip_folders() {
        for compress in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            fixture(dir.path(), compress);
            let tt = load_idx_dir(dir.path()).unwrap();
            assert_eq!(tt.train.x.shape(), &[3, 1, 2, 2]);
            assert_eq!(tt.train.y, vec![0, 2, 1]);
            assert_eq!(tt.train.num_classes(), 4);
            assert_eq!(tt.test.num_classes(), 4);
            assert!((tt.train.x[[1, 0, 0, 0]] - 80.0 / 255.0).abs() < 1e-7);
        }
    }

    #[test]
    fn bad_files_give_typed_errors() {
        let p = Path::new("f");
        assert!(matches!(
            parse_idx(p, b"\x01\x00\x08\x01"),
            Err(DataError::BadMagic { .. })
        ));
        assert!(matches!(
            parse_idx(p, b"\x00\x00\x07\x01"),
            Err(DataError::BadMagic { .. })
        ));
        assert!(matches!(
            parse_idx(p, &[0, 0, 8, 3, 0, 0]),
            Err(DataError::Truncated { .. })
        ));
        let b = idx_bytes(&[4, 2], &[1, 2, 3]);
        assert!(matches!(
            parse_idx(p, &b),
            Err(DataError::Truncated {
                expected: 8,
                found: 3,
                ..
            })
        ));
        let b = idx_bytes(&[1], &[1, 2]);
        assert!(matches!(parse_idx(p, &b), Err(DataError::Format { .. })));
        let huge = idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]);
        assert!(parse_idx(p, &huge).is_err());

        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), true);
        // Labels that do not match the images.
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte.gz"),
            gz(&idx_bytes(&[2], &[1, 1])),
        )
        .unwrap();
        assert!(matches!(
            load_idx_dir(dir.path()),
            Err(DataError::Shape { .. })
        ));
        // A corrupt gzip stream.
        let good = gz(&idx_bytes(&[1], &[1]));
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte.gz"),
            &good[..good.len() / 2],
        )
        .unwrap();
        assert!(load_idx_dir(dir.path()).is_err());
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let e = load_idx_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("t10k-labels-idx1-ubyte"), "{e}");
    }

    #[test]
    fn round_trips_u8_files_and_other_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.idx");
        write_idx_u8(&p, &[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
        let a = read_idx(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, IdxData::U8(vec![1, 2, 3, 4, 5, 6]));
        let mut f32s = vec![0, 0, 0x0D, 1, 0, 0, 0, 2];
        f32s.extend_from_slice(&1.5f32.to_be_bytes());
        f32s.extend_from_slice(&(-2.0f32).to_be_bytes());
        assert_eq!(
            parse_idx(&p, &f32s).unwrap().data,
            IdxData::F32(vec![1.5, -2.0])
        );
    }

    #[test]
    fn loads_the_bundled_mnist_subset() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-subset");
        let tt = load_idx_dir(&dir).unwrap();
        assert_eq!(tt.train.x.shape(), &[6000, 1, 28, 28]);
        assert_eq!(tt.test.len(), 1000);
        assert_eq!(tt.train.num_classes(), 10);
        assert!(tt.train.class_counts().iter().all(|&c| c > 400));
    }
}

//! Folders of PNG images, one subfolder per class (`root/<class>/<image>.png`).

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::{DataError, Dataset};

/// Largest image side accepted.
const MAX_SIDE: u32 = 8192;
/// Most images read from one folder tree.
const MAX_IMAGES: usize = 10_000_000;

/// Colour channels to decode images into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Grayscale, 1 channel.
    Gray,
    /// RGB, 3 channels.
    Rgb,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(dir, err)))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// Decodes one PNG into `[C, H, W]` values in `[0, 1]`.
pub fn read_png(path: &Path, channels: Channels) -> Result<(Vec<f32>, u32, u32), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            format: "PNG",
            found: crate::io::hex_prefix(&bytes),
        });
    }
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| DataError::format(path, format!("PNG: {e}")))?;
    let (w, h) = (img.width(), img.height());
    let data = match channels {
        Channels::Gray => img
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(|v| f32::from(v) / 255.0)
            .collect(),
        Channels::Rgb => {
            // Interleaved HWC -> planar CHW.
            let raw = img.to_rgb8().into_raw();
            let hw = (w as usize) * (h as usize);
            let mut out = vec![0.0; 3 * hw];
            for (i, px) in raw.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * hw + i] = f32::from(px[c]) / 255.0;
                }
            }
            out
        }
    };
    Ok((data, w, h))
}

/// Loads `root/<class>/*.png` into `[N, C, H, W]` (values in `[0, 1]`); classes are the
/// subfolder names, sorted. Every image must have the same size. Files that are not `.png` are
/// skipped; a `.png` that does not decode is an error.
pub fn load_image_folder(root: &Path, channels: Channels) -> Result<Dataset, DataError> {
    let classes: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(DataError::format(root, "no class subfolders"));
    }
    let c = match channels {
        Channels::Gray => 1,
        Channels::Rgb => 3,
    };
    let (mut data, mut y, mut size) = (Vec::new(), Vec::new(), None);
    for (k, dir) in classes.iter().enumerate() {
        for file in sorted_entries(dir)? {
            let is_png = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if !is_png || !file.is_file() {
                continue;
            }
            if y.len() >= MAX_IMAGES {
                return Err(DataError::TooLarge {
                    path: root.to_path_buf(),
                    message: format!("more than {MAX_IMAGES} images"),
                });
            }
            let (px, w, h) = read_png(&file, channels)?;
            match size {
                None => size = Some((w, h)),
                Some(s) if s != (w, h) => {
                    return Err(DataError::shape(
                        &file,
                        format!("image is {w}×{h}, earlier images are {}×{}", s.0, s.1),
                    ));
                }
                Some(_) => {}
            }
            data.extend(px);
            y.push(k);
        }
    }
    let (w, h) =
        size.ok_or_else(|| DataError::format(root, "no .png images in the class subfolders"))?;
    let x = ArrayD::from_shape_vec(IxDyn(&[y.len(), c, h as usize, w as usize]), data)
        .map_err(|e| DataError::shape(root, e.to_string()))?;
    let names = classes
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut d = Dataset::new(x, y, names)?;
    d.input_range = Some((0.0, 1.0));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        img.save_with_format(path, image::ImageFormat::Png).unwrap();
    }

    #[test]
    fn loads_classes_from_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        for (class, v) in [("cat", 255u8), ("dog", 0)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..2 {
                png(
                    &dir.path().join(class).join(format!("{i}.png")),
                    3,
                    2,
                    |x, _| [v, x as u8 * 100, 0],
                );
            }
        }
        std::fs::write(dir.path().join("dog/notes.txt"), "skip me").unwrap();
        let d = load_image_folder(dir.path(), Channels::Rgb).unwrap();
        assert_eq!(d.x.shape(), &[4, 3, 2, 3]);
        assert_eq!(d.class_names, vec!["cat", "dog"]);
        assert_eq!(d.y, vec![0, 0, 1, 1]);
        assert_eq!(d.x[[0, 0, 0, 0]], 1.0);
        assert!((d.x[[2, 1, 1, 2]] - 200.0 / 255.0).abs() < 1e-6);
        let g = load_image_folder(dir.path(), Channels::Gray).unwrap();
        assert_eq!(g.x.shape(), &[4, 1, 2, 3]);

        png(&dir.path().join("dog/big.png"), 4, 4, |_, _| [0, 0, 0]);
        assert!(matches!(
            load_image_folder(dir.path(), Channels::Rgb),
            Err(DataError::Shape { .. })
        ));
        std::fs::write(
            dir.path().join("dog/big.png"),
            b"\x89PNG\r\n\x1a\ntruncated",
        )
        .unwrap();
        assert!(matches!(
            load_image_folder(dir.path(), Channels::Rgb),
            Err(DataError::Format { .. })
        ));
        std::fs::write(dir.path().join("dog/big.png"), b"GIF89a").unwrap();
        assert!(matches!(
            load_image_folder(dir.path(), Channels::Rgb),
            Err(DataError::BadMagic { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(load_image_folder(empty.path(), Channels::Gray).is_err());
    }
}

//! Progress bars (stderr, only when the context allows them).

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::Ctx;

/// A byte-count bar sized to the model's total size (hidden in JSON mode or when not a terminal).
pub fn bytes_bar(ctx: &Ctx, model: &Path) -> ProgressBar {
    if !ctx.progress() {
        return ProgressBar::hidden();
    }
    let total: u64 = if model.is_file() {
        std::fs::metadata(model).map(|m| m.len()).unwrap_or(0)
    } else {
        walkdir_size(model)
    };
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} hashing {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn walkdir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

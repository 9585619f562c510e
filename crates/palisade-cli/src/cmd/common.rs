//! Wiring shared by the model commands: where data comes from, opening models, progress bars.

use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use palisade_core::Classifier;
use palisade_data::{Dataset, TrainTest};
use palisade_model::evaluate::{Evaluation, evaluate};
use palisade_model::native::NativeNet;

use crate::output::Ctx;

/// The bundled MNIST subset (6,000 train + 1,000 test), embedded so the defaults need no files.
const SUBSET: [&[u8]; 4] = [
    include_bytes!("../../../../data/mnist-subset/train-images-idx3-ubyte.gz"),
    include_bytes!("../../../../data/mnist-subset/train-labels-idx1-ubyte.gz"),
    include_bytes!("../../../../data/mnist-subset/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../../../../data/mnist-subset/t10k-labels-idx1-ubyte.gz"),
];

/// Name of the embedded data set in reports.
pub const SUBSET_NAME: &str = "bundled MNIST subset";

/// Loads an IDX folder, or the embedded MNIST subset when `dir` is `None`. Returns a display
/// name and the two parts.
pub fn load_idx(dir: Option<&Path>) -> anyhow::Result<(String, TrainTest)> {
    match dir {
        Some(d) => Ok((
            d.display().to_string(),
            palisade_data::idx::load_idx_dir(d)
                .with_context(|| format!("loading IDX data from {}", d.display()))?,
        )),
        None => {
            let train = palisade_data::idx::idx_pair_from_bytes(
                "mnist-subset/train",
                SUBSET[0],
                SUBSET[1],
                10,
            )?;
            let test = palisade_data::idx::idx_pair_from_bytes(
                "mnist-subset/t10k",
                SUBSET[2],
                SUBSET[3],
                10,
            )?;
            Ok((SUBSET_NAME.to_string(), TrainTest { train, test }))
        }
    }
}

/// Opens a model for black-box (and, where it has gradients, white-box) use: a native
/// checkpoint (directory, `model.json` or `model.safetensors`) or an ONNX file, recognised by
/// content.
pub fn open_model(path: &Path) -> anyhow::Result<Box<dyn Classifier>> {
    if palisade_model::native::is_checkpoint(path) {
        let net = NativeNet::load(path).with_context(|| format!("loading {}", path.display()))?;
        return Ok(Box::new(net));
    }
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let model = palisade_model::open(path, &palisade_model::OpenOptions::default())
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(model)
}

/// A progress bar on stderr, hidden in `--json` mode.
pub fn bar(ctx: &Ctx, len: u64, what: &str) -> ProgressBar {
    if !ctx.progress() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Evaluates `model` on `data` with a progress bar.
pub fn evaluate_with_bar(
    ctx: &Ctx,
    model: &dyn Classifier,
    data: &Dataset,
) -> anyhow::Result<Evaluation> {
    let pb = bar(ctx, data.len() as u64, "eval");
    let e = evaluate(model, data.x.view(), &data.y, 256, &mut |done| {
        pb.set_position(done as u64)
    })
    .with_context(|| format!("evaluating {}", model.info().name))?;
    pb.finish_and_clear();
    Ok(e)
}

/// Per-class accuracies as one text line.
pub fn per_class_line(e: &Evaluation) -> String {
    e.per_class
        .iter()
        .map(|c| format!("{}:{:.1}", c.class, 100.0 * c.accuracy))
        .collect::<Vec<_>>()
        .join(" ")
}

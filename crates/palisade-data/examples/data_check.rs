//! Loads real data sets and prints what was read: an IDX folder and UCI Adult (train encoding
//! fitted on adult.data, applied to adult.test).
//!
//! `cargo run --release -p palisade-data --example data_check -- IDX_DIR ADULT_DIR`
//! (`bench/data_check.sh` passes `../shared/data/...`).

use std::path::Path;

use palisade_data::tabular::{TabularEncoder, adult_options, read_table};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [idx, adult] = args.as_slice() else {
        return Err("usage: data_check IDX_DIR ADULT_DIR".into());
    };
    let tt = palisade_data::idx::load_idx_dir(Path::new(idx))?;
    println!(
        "{idx}: train {:?}, test {:?}, {} classes, train class counts {:?}",
        tt.train.x.shape(),
        tt.test.x.shape(),
        tt.train.num_classes(),
        tt.train.class_counts()
    );
    let opts = adult_options();
    let train = read_table(&Path::new(adult).join("adult.data"), &opts)?;
    let enc = TabularEncoder::fit(&train, &opts)?;
    let tr = enc.transform(&train)?;
    let te = enc.transform(&read_table(&Path::new(adult).join("adult.test"), &opts)?)?;
    let s = tr.sensitive.as_ref().ok_or("no sensitive attribute")?;
    println!(
        "adult: train {:?}, test {:?}, classes {:?} (train counts {:?}, test counts {:?}), sensitive '{}' {:?}, {} features (first: {:?})",
        tr.x.shape(),
        te.x.shape(),
        tr.class_names,
        tr.class_counts(),
        te.class_counts(),
        s.name,
        s.categories,
        tr.feature_names.len(),
        &tr.feature_names[..6.min(tr.feature_names.len())]
    );
    Ok(())
}

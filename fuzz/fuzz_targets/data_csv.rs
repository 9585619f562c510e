//! CSV tables: parsing never panics; what parses has one value per column and unique column
//! names; an encoder fitted on a table encodes that same table, into finite features, one row
//! per data row. A first byte below 8 picks the options (bit 0: `;` as delimiter, bit 1: `#`
//! comments, bit 2: the first column as sensitive attribute) and is not part of the CSV; any
//! other first byte starts the CSV itself, so a real CSV file seeds the target as it is.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_data::tabular::{TabularEncoder, TabularOptions, parse_table};

fuzz_target!(|data: &[u8]| {
    let (pick, csv) = match data.split_first() {
        Some((&b, rest)) if b < 8 => (b, rest),
        _ => (0, data),
    };
    let mut opts = TabularOptions::new("");
    opts.delimiter = if pick & 1 == 0 { b',' } else { b';' };
    opts.comment = (pick & 2 != 0).then_some(b'#');
    let p = Path::new("fuzz.csv");
    let Ok(table) = parse_table(p, csv, &opts) else {
        return;
    };
    for (j, n) in table.names.iter().enumerate() {
        assert!(!table.names[..j].contains(n), "duplicate column {n}");
    }
    assert!(table.rows.iter().all(|r| r.len() == table.names.len()));
    // The last column is the label.
    let Some(label) = table.names.last() else {
        return;
    };
    opts.label = label.clone();
    if pick & 4 != 0 && table.names.len() > 1 {
        opts.sensitive = Some(table.names[0].clone());
    }
    if let Ok(enc) = TabularEncoder::fit(&table, &opts) {
        let d = enc
            .transform(&table)
            .expect("an encoder encodes the table it was fitted on");
        assert_eq!(d.len(), table.rows.len());
        assert_eq!(d.x.shape()[1], enc.feature_names().len());
        assert!(d.x.iter().all(|v| v.is_finite()), "non-finite feature");
    }
});

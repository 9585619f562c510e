//! CSV tabular data: numeric columns standardised, categorical columns one-hot encoded, a
//! label column, and a sensitive-attribute column kept apart from the features.
//!
//! The encoding is fitted on one table (the training part) and applied unchanged to others
//! ([`TabularEncoder`]), so test data never leaks into the scaling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ndarray::{Array2, IxDyn};
use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset, Sensitive};

/// Most rows and columns a table may have.
const MAX_ROWS: usize = 50_000_000;
const MAX_COLUMNS: usize = 100_000;

/// How to read and encode a CSV file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabularOptions {
    /// The label column.
    pub label: String,
    /// A sensitive-attribute column, removed from the features and kept apart.
    pub sensitive: Option<String>,
    /// Columns to treat as categorical; `None` detects them (a column with any non-numeric
    /// value is categorical).
    pub categorical: Option<Vec<String>>,
    /// Columns to ignore.
    pub drop: Vec<String>,
    /// Column names when the file has no header row; `None` reads them from the first row.
    pub columns: Option<Vec<String>>,
    /// Values that mean "missing" (numeric: replaced by the training mean; categorical: their
    /// own category `?`).
    pub missing: Vec<String>,
    /// Field delimiter.
    pub delimiter: u8,
    /// Lines starting with this byte are skipped.
    pub comment: Option<u8>,
    /// A suffix removed from label values (UCI Adult's test labels end in `.`).
    pub label_strip_suffix: Option<String>,
}

impl TabularOptions {
    /// Options for a comma-separated file with a header row and label column `label`.
    pub fn new(label: impl Into<String>) -> Self {
        TabularOptions {
            label: label.into(),
            sensitive: None,
            categorical: None,
            drop: Vec::new(),
            columns: None,
            missing: vec!["".into(), "?".into(), "NA".into(), "NaN".into()],
            delimiter: b',',
            comment: None,
            label_strip_suffix: None,
        }
    }
}

/// A CSV table as trimmed strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The file it came from (for errors).
    pub path: PathBuf,
    /// Column names.
    pub names: Vec<String>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<String>>,
}

/// Reads a CSV file into strings (values trimmed; empty lines skipped).
pub fn read_table(path: &Path, opts: &TabularOptions) -> Result<Table, DataError> {
    let bytes = crate::io::read_maybe_gz(path, crate::io::MAX_FILE_BYTES)?;
    parse_table(path, &bytes, opts)
}

/// Parses CSV bytes into strings, as [`read_table`] does (`path` names them in errors). Every
/// row has one value per column, and no two columns have the same name.
pub fn parse_table(path: &Path, bytes: &[u8], opts: &TabularOptions) -> Result<Table, DataError> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(opts.delimiter)
        .has_headers(false)
        .flexible(true)
        .comment(opts.comment)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut rows = Vec::new();
    let mut names = opts.columns.clone();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            DataError::format(path, format!("line {line}: {e}"))
        })?;
        if rec.iter().all(str::is_empty) {
            continue;
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let values: Vec<String> = rec.iter().map(str::to_string).collect();
        if values.len() > MAX_COLUMNS {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                message: format!("{} columns", values.len()),
            });
        }
        match &names {
            None => {
                names = Some(values);
                continue;
            }
            Some(n) if n.len() != values.len() => {
                return Err(DataError::shape(
                    path,
                    format!(
                        "line {line} has {} fields, the header {}",
                        values.len(),
                        n.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        if rows.len() >= MAX_ROWS {
            return Err(DataError::TooLarge {
                path: path.to_path_buf(),
                message: format!("more than {MAX_ROWS} rows"),
            });
        }
        rows.push(values);
    }
    let names = names.ok_or_else(|| DataError::format(path, "empty CSV file"))?;
    // Columns are found by name: a second column of the same name would be fitted from one
    // column and encoded from the other.
    let mut seen = BTreeMap::new();
    for (j, n) in names.iter().enumerate() {
        if let Some(first) = seen.insert(n.as_str(), j) {
            return Err(DataError::format(
                path,
                format!(
                    "column '{n}' appears twice (columns {} and {})",
                    first + 1,
                    j + 1
                ),
            ));
        }
    }
    Ok(Table {
        path: path.to_path_buf(),
        names,
        rows,
    })
}

/// How one feature column is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnEncoding {
    /// `(v - mean) / std`; missing values become 0 (the mean).
    Numeric {
        /// Column name.
        name: String,
        /// Training mean.
        mean: f64,
        /// Training standard deviation (1 when constant).
        std: f64,
    },
    /// One feature per category seen in training; an unseen category encodes as all zeros.
    Categorical {
        /// Column name.
        name: String,
        /// Categories, sorted.
        categories: Vec<String>,
    },
}

/// An encoding fitted on a training table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabularEncoder {
    /// The options it was fitted with.
    pub options: TabularOptions,
    /// Feature columns, in output order.
    pub columns: Vec<ColumnEncoding>,
    /// Label classes, sorted.
    pub classes: Vec<String>,
    /// Categories of the sensitive attribute, sorted.
    pub sensitive_categories: Vec<String>,
}

fn col(table: &Table, name: &str) -> Result<usize, DataError> {
    table.names.iter().position(|n| n == name).ok_or_else(|| {
        DataError::format(
            &table.path,
            format!("no column '{name}' (columns: {})", table.names.join(", ")),
        )
    })
}

const MISSING_CATEGORY: &str = "?";

impl TabularEncoder {
    fn is_missing(&self, v: &str) -> bool {
        self.options.missing.iter().any(|m| m == v)
    }

    fn label_of<'a>(&self, v: &'a str) -> &'a str {
        match &self.options.label_strip_suffix {
            Some(s) => v.strip_suffix(s.as_str()).unwrap_or(v),
            None => v,
        }
    }

    fn category<'a>(&self, v: &'a str) -> &'a str {
        if self.is_missing(v) {
            MISSING_CATEGORY
        } else {
            v
        }
    }

    /// Fits the encoding on `table`.
    pub fn fit(table: &Table, options: &TabularOptions) -> Result<TabularEncoder, DataError> {
        let mut enc = TabularEncoder {
            options: options.clone(),
            columns: Vec::new(),
            classes: Vec::new(),
            sensitive_categories: Vec::new(),
        };
        if table.rows.is_empty() {
            return Err(DataError::format(&table.path, "no data rows"));
        }
        let label = col(table, &options.label)?;
        let sensitive = options
            .sensitive
            .as_deref()
            .map(|s| col(table, s))
            .transpose()?;
        for d in &options.drop {
            col(table, d)?;
        }
        if let Some(cats) = &options.categorical {
            for c in cats {
                col(table, c)?;
            }
        }
        let classes: BTreeSet<&str> = table.rows.iter().map(|r| enc.label_of(&r[label])).collect();
        enc.classes = classes.into_iter().map(str::to_string).collect();
        if enc.classes.len() < 2 {
            return Err(DataError::format(
                &table.path,
                format!("label column '{}' has fewer than 2 classes", options.label),
            ));
        }
        if let Some(s) = sensitive {
            let cats: BTreeSet<&str> = table.rows.iter().map(|r| enc.category(&r[s])).collect();
            enc.sensitive_categories = cats.into_iter().map(str::to_string).collect();
        }
        for (j, name) in table.names.iter().enumerate() {
            if j == label || Some(j) == sensitive || options.drop.contains(name) {
                continue;
            }
            let present = table
                .rows
                .iter()
                .map(|r| r[j].as_str())
                .filter(|v| !enc.is_missing(v));
            let forced = options.categorical.as_ref().map(|c| c.contains(name));
            let numeric: Option<Vec<f64>> = match forced {
                Some(true) => None,
                _ => present
                    .clone()
                    .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite()))
                    .collect(),
            };
            match numeric {
                Some(vals) => {
                    let n = vals.len().max(1) as f64;
                    let mean = vals.iter().sum::<f64>() / n;
                    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
                    // Values near f64's limit overflow the sum or the squares: refused, rather
                    // than encoded as NaN or infinity.
                    if !mean.is_finite() || !std.is_finite() {
                        return Err(DataError::format(
                            &table.path,
                            format!(
                                "column '{name}' has values too large to standardise (mean {mean}, standard deviation {std})"
                            ),
                        ));
                    }
                    enc.columns.push(ColumnEncoding::Numeric {
                        name: name.clone(),
                        mean,
                        std,
                    });
                }
                None if forced == Some(false) => {
                    return Err(DataError::format(
                        &table.path,
                        format!("column '{name}' is not numeric"),
                    ));
                }
                None => {
                    let cats: BTreeSet<&str> =
                        table.rows.iter().map(|r| enc.category(&r[j])).collect();
                    enc.columns.push(ColumnEncoding::Categorical {
                        name: name.clone(),
                        categories: cats.into_iter().map(str::to_string).collect(),
                    });
                }
            }
        }
        Ok(enc)
    }

    /// Names of the encoded features (`col` for numeric, `col=value` for one-hot).
    pub fn feature_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .flat_map(|c| match c {
                ColumnEncoding::Numeric { name, .. } => vec![name.clone()],
                ColumnEncoding::Categorical { name, categories } => {
                    categories.iter().map(|v| format!("{name}={v}")).collect()
                }
            })
            .collect()
    }

    /// Encodes `table` (which must have the fitted columns) into a dataset `[N, features]`.
    pub fn transform(&self, table: &Table) -> Result<Dataset, DataError> {
        let label = col(table, &self.options.label)?;
        let sensitive = self
            .options
            .sensitive
            .as_deref()
            .map(|s| col(table, s))
            .transpose()?;
        let idx: Vec<usize> =
            self.columns
                .iter()
                .map(|c| match c {
                    ColumnEncoding::Numeric { name, .. }
                    | ColumnEncoding::Categorical { name, .. } => col(table, name),
                })
                .collect::<Result<_, _>>()?;
        let lookup: Vec<BTreeMap<&str, usize>> = self
            .columns
            .iter()
            .map(|c| match c {
                ColumnEncoding::Categorical { categories, .. } => categories
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.as_str(), i))
                    .collect(),
                ColumnEncoding::Numeric { .. } => BTreeMap::new(),
            })
            .collect();
        let width = self.feature_names().len();
        let n = table.rows.len();
        let mut x = Array2::<f32>::zeros((n, width));
        let mut y = Vec::with_capacity(n);
        let mut s_values = Vec::new();
        for (r, row) in table.rows.iter().enumerate() {
            let line = r + 1;
            let l = self.label_of(&row[label]);
            let class = self.classes.iter().position(|c| c == l).ok_or_else(|| {
                DataError::format(
                    &table.path,
                    format!("data row {line}: label '{l}' was not seen in training"),
                )
            })?;
            y.push(class);
            if let Some(s) = sensitive {
                let v = self.category(&row[s]);
                let k = self
                    .sensitive_categories
                    .iter()
                    .position(|c| c == v)
                    .ok_or_else(|| {
                        DataError::format(
                            &table.path,
                            format!(
                                "data row {line}: sensitive value '{v}' was not seen in training"
                            ),
                        )
                    })?;
                s_values.push(k);
            }
            let mut k = 0;
            for ((enc, &j), look) in self.columns.iter().zip(&idx).zip(&lookup) {
                let v = row[j].as_str();
                match enc {
                    ColumnEncoding::Numeric { name, mean, std } => {
                        if !self.is_missing(v) {
                            let f: f64 = v.parse().ok().filter(|f: &f64| f.is_finite()).ok_or_else(|| {
                                DataError::format(&table.path, format!("data row {line}: column '{name}' value '{v}' is not a number"))
                            })?;
                            // A value far from the training values (a tiny training spread, or
                            // a huge value) can overflow f32: refused, never encoded as infinity.
                            let z = ((f - mean) / std) as f32;
                            if !z.is_finite() {
                                return Err(DataError::format(
                                    &table.path,
                                    format!(
                                        "data row {line}: column '{name}' value '{v}' is too far from the training values to standardise (mean {mean}, standard deviation {std})"
                                    ),
                                ));
                            }
                            x[[r, k]] = z;
                        }
                        k += 1;
                    }
                    ColumnEncoding::Categorical { categories, .. } => {
                        if let Some(&c) = look.get(self.category(v)) {
                            x[[r, k + c]] = 1.0;
                        }
                        k += categories.len();
                    }
                }
            }
        }
        let mut d = Dataset::new(
            x.into_shape_with_order(IxDyn(&[n, width]))
                .map_err(|e| DataError::shape(&table.path, e.to_string()))?,
            y,
            self.classes.clone(),
        )?;
        d.feature_names = self.feature_names();
        if let Some(name) = &self.options.sensitive {
            d.sensitive = Some(Sensitive {
                name: name.clone(),
                categories: self.sensitive_categories.clone(),
                values: s_values,
            });
        }
        d.validate()?;
        Ok(d)
    }
}

/// Reads `path`, fits the encoding on it and encodes it.
pub fn load_tabular(
    path: &Path,
    options: &TabularOptions,
) -> Result<(Dataset, TabularEncoder), DataError> {
    let table = read_table(path, options)?;
    let enc = TabularEncoder::fit(&table, options)?;
    Ok((enc.transform(&table)?, enc))
}

/// Options for UCI Adult's `adult.data` / `adult.test` (no header, `?` for missing, test
/// labels ending in `.`, the `|1x3 Cross validator` line skipped), label `income`, with `sex`
/// as the sensitive attribute and `fnlwgt` dropped.
pub fn adult_options() -> TabularOptions {
    let mut o = TabularOptions::new("income");
    o.columns = Some(
        [
            "age",
            "workclass",
            "fnlwgt",
            "education",
            "education-num",
            "marital-status",
            "occupation",
            "relationship",
            "race",
            "sex",
            "capital-gain",
            "capital-loss",
            "hours-per-week",
            "native-country",
            "income",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    o.sensitive = Some("sex".into());
    o.drop = vec!["fnlwgt".into()];
    o.comment = Some(b'|');
    o.label_strip_suffix = Some(".".into());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAIN: &str =
        "age,color,group,label\n30,red,a,yes\n40,blue,b,no\n50, red ,a,yes\n?,green,b,no\n";

    fn write(dir: &Path, name: &str, s: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, s).unwrap();
        p
    }

    #[test]
    fn encodes_numeric_categorical_label_and_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = TabularOptions::new("label");
        o.sensitive = Some("group".into());
        let (d, enc) = load_tabular(&write(dir.path(), "t.csv", TRAIN), &o).unwrap();
        assert_eq!(
            enc.feature_names(),
            vec!["age", "color=blue", "color=green", "color=red"]
        );
        assert_eq!(d.x.shape(), &[4, 4]);
        assert_eq!(d.class_names, vec!["no", "yes"]);
        assert_eq!(d.y, vec![1, 0, 1, 0]);
        let s = d.sensitive.as_ref().unwrap();
        assert_eq!(
            (s.categories.clone(), s.values.clone()),
            (vec!["a".to_string(), "b".to_string()], vec![0, 1, 0, 1])
        );
        // age standardised over the 3 present values (mean 40, std sqrt(200/3)); missing -> 0.
        let std = (200.0f64 / 3.0).sqrt();
        assert!((d.x[[0, 0]] as f64 + 10.0 / std).abs() < 1e-6);
        assert_eq!(d.x[[3, 0]], 0.0);
        assert_eq!(
            d.x.index_axis(ndarray::Axis(0), 2)
                .iter()
                .skip(1)
                .copied()
                .collect::<Vec<f32>>(),
            vec![0.0, 0.0, 1.0]
        );

        // The same encoding applied to new data: unseen category -> zeros, unseen label -> error.
        let test = read_table(
            &write(
                dir.path(),
                "u.csv",
                "age,color,group,label\n45,purple,a,no\n",
            ),
            &o,
        )
        .unwrap();
        let t = enc.transform(&test).unwrap();
        assert!((t.x[[0, 0]] as f64 - 5.0 / std).abs() < 1e-6);
        assert_eq!(
            t.x.index_axis(ndarray::Axis(0), 0)
                .iter()
                .skip(1)
                .copied()
                .collect::<Vec<f32>>(),
            vec![0.0, 0.0, 0.0]
        );
        let bad = read_table(
            &write(
                dir.path(),
                "v.csv",
                "age,color,group,label\n45,red,a,maybe\n",
            ),
            &o,
        )
        .unwrap();
        assert!(
            enc.transform(&bad)
                .unwrap_err()
                .to_string()
                .contains("maybe")
        );
    }

    #[test]
    fn headerless_files_with_comments_and_label_suffixes() {
        let dir = tempfile::tempdir().unwrap();
        let text = "|1x3 Cross validator\n39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K.\n50, ?, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Female, 0, 0, 13, United-States, >50K.\n";
        let (d, enc) =
            load_tabular(&write(dir.path(), "adult.test", text), &adult_options()).unwrap();
        assert_eq!(d.class_names, vec!["<=50K", ">50K"]);
        assert_eq!(
            d.sensitive.as_ref().unwrap().categories,
            vec!["Female", "Male"]
        );
        assert!(
            !enc.feature_names()
                .iter()
                .any(|f| f.starts_with("fnlwgt") || f.starts_with("sex"))
        );
        assert!(enc.feature_names().contains(&"workclass=?".to_string()));
    }

    #[test]
    fn malformed_tables_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let o = TabularOptions::new("label");
        let ragged = write(dir.path(), "r.csv", "a,label\n1,x\n2\n");
        assert!(matches!(
            load_tabular(&ragged, &o),
            Err(DataError::Shape { .. })
        ));
        let nolabel = write(dir.path(), "n.csv", "a,b\n1,2\n");
        assert!(
            load_tabular(&nolabel, &o)
                .unwrap_err()
                .to_string()
                .contains("no column 'label'")
        );
        let one_class = write(dir.path(), "o.csv", "a,label\n1,x\n2,x\n");
        assert!(load_tabular(&one_class, &o).is_err());
        let mut forced = o.clone();
        forced.categorical = Some(vec!["a".into()]);
        let (d, _) =
            load_tabular(&write(dir.path(), "f.csv", "a,label\n1,x\n2,y\n"), &forced).unwrap();
        assert_eq!(d.feature_names, vec!["a=1", "a=2"]);
        assert!(load_tabular(&write(dir.path(), "e.csv", ""), &o).is_err());
    }

    #[test]
    fn duplicate_columns_and_unstandardisable_values_are_refused() {
        let p = Path::new("t.csv");
        let o = TabularOptions::new("label");
        // A second 'label' column used to be fitted as a numeric feature from its own values
        // and encoded from the first 'label' column's, failing on the very table it was fitted on.
        let err = parse_table(p, b"a,label,label\n1,x,2\n3,y,4\n", &o).unwrap_err();
        assert!(
            err.to_string()
                .contains("column 'label' appears twice (columns 2 and 3)"),
            "{err}"
        );
        // Values whose sum or squares overflow f64 used to be encoded as NaN.
        let huge = parse_table(p, b"a,label\n1e308,x\n1e308,y\n-1e308,x\n", &o).unwrap();
        let err = TabularEncoder::fit(&huge, &o).unwrap_err();
        assert!(
            err.to_string().contains("column 'a' has values too large"),
            "{err}"
        );
        let wide = parse_table(p, b"a,label\n1e200,x\n-1e200,y\n", &o).unwrap();
        assert!(TabularEncoder::fit(&wide, &o).is_err());
        // Large but representable values are fine, and encode finite.
        let big = parse_table(p, b"a,label\n1e150,x\n-1e150,y\n", &o).unwrap();
        let d = TabularEncoder::fit(&big, &o)
            .unwrap()
            .transform(&big)
            .unwrap();
        assert!(d.x.iter().all(|v| v.is_finite()));
        // Fitted on a tiny spread, a later table's ordinary value is ~1e160 deviations away:
        // beyond f32, so refused rather than encoded as infinity.
        let narrow = parse_table(p, b"a,label\n0,x\n1e-160,y\n", &o).unwrap();
        let enc = TabularEncoder::fit(&narrow, &o).unwrap();
        assert!(
            enc.transform(&narrow)
                .unwrap()
                .x
                .iter()
                .all(|v| v.is_finite())
        );
        let later = parse_table(p, b"a,label\n1,x\n", &o).unwrap();
        let err = enc.transform(&later).unwrap_err();
        assert!(
            err.to_string().contains("too far from the training values"),
            "{err}"
        );
    }
}

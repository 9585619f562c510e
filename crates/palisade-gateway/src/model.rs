//! The models a gateway serves: versions, the active one, hot swap and roll back.
//!
//! A [`ServedModel`] is a classifier plus what the guards need to know about it (its policy and
//! tensor names). How it was loaded, and which checks it passed, is the concern of the loader:
//! see [`crate::loader`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use palisade_core::Classifier;
use serde::Serialize;

use crate::policy::{Policy, Reveal};
use crate::stats::VersionStats;

/// Whether `s` may name a model or a version: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// One version of one model, ready to serve.
pub struct ServedModel {
    /// Model name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// The model.
    pub classifier: Arc<dyn Classifier>,
    /// What the guards enforce.
    pub policy: Policy,
    /// Name of the input tensor.
    pub input_name: String,
    /// Name of the main output tensor.
    pub output_name: String,
    /// Platform string for metadata (`onnx`, `palisade-linear`, …).
    pub platform: String,
    /// What this version has served (Triton's statistics extension), from zero when loaded.
    pub stats: Arc<VersionStats>,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// A tensor in model metadata.
#[derive(Debug, Clone, Serialize)]
pub struct TensorMetadata {
    /// Name.
    pub name: String,
    /// OIP datatype.
    pub datatype: &'static str,
    /// Shape; -1 is the batch axis.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}` response.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetadata {
    /// Name.
    pub name: String,
    /// Available versions.
    pub versions: Vec<String>,
    /// Platform.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs, as the output policy shapes them.
    pub outputs: Vec<TensorMetadata>,
}

impl ServedModel {
    /// The name of the class-index output that accompanies top-k scores.
    pub fn classes_output_name(&self) -> String {
        format!("{}_classes", self.output_name)
    }

    /// The outputs a client can ask for, as the policy shapes them.
    pub fn outputs(&self) -> Vec<TensorMetadata> {
        let c = self.classifier.info().num_classes as i64;
        let o = &self.policy.output;
        match (o.reveal, o.top_k) {
            (Reveal::Label, _) => vec![TensorMetadata {
                name: "label".into(),
                datatype: "INT64",
                shape: vec![-1],
            }],
            (_, Some(k)) => {
                let k = (k as i64).min(c);
                vec![
                    TensorMetadata {
                        name: self.output_name.clone(),
                        datatype: "FP32",
                        shape: vec![-1, k],
                    },
                    TensorMetadata {
                        name: self.classes_output_name(),
                        datatype: "INT64",
                        shape: vec![-1, k],
                    },
                ]
            }
            (_, None) => vec![TensorMetadata {
                name: self.output_name.clone(),
                datatype: "FP32",
                shape: vec![-1, c],
            }],
        }
    }

    /// The input tensor a client sends.
    pub fn input(&self) -> TensorMetadata {
        let mut shape = vec![-1i64];
        shape.extend(self.classifier.info().input_shape.iter().map(|&d| d as i64));
        TensorMetadata {
            name: self.input_name.clone(),
            datatype: "FP32",
            shape,
        }
    }

    /// Metadata of this version, listing `versions`.
    pub fn metadata(&self, versions: Vec<String>) -> ModelMetadata {
        ModelMetadata {
            name: self.name.clone(),
            versions,
            platform: self.platform.clone(),
            inputs: vec![self.input()],
            outputs: self.outputs(),
        }
    }

    /// This version's configuration as Triton's model configuration extension gives it, for
    /// clients that ask for it (tritonclient's `get_model_config`): the same tensors as
    /// [`ServedModel::metadata`]. `max_batch_size` is 0, Triton's "no batching of its own", so
    /// `dims` are whole shapes, the batch dimension `-1` among them.
    pub fn config(&self) -> ModelConfig {
        let tensor = |t: TensorMetadata| ConfigTensor {
            name: t.name,
            // Only the protocol's own datatypes reach here (this module's outputs).
            data_type: crate::oip::triton_datatype(t.datatype).unwrap_or("TYPE_INVALID"),
            dims: t.shape,
        };
        ModelConfig {
            name: self.name.clone(),
            platform: self.platform.clone(),
            max_batch_size: 0,
            input: vec![tensor(self.input())],
            output: self.outputs().into_iter().map(tensor).collect(),
        }
    }

    /// What this version has served, as Triton's statistics extension gives it.
    pub fn statistics(&self) -> crate::stats::ModelStatistics {
        self.stats.snapshot(&self.name, &self.version)
    }
}

/// `GET /v2/models/{m}[/versions/{v}]/config` response: the part of Triton's `ModelConfig`
/// (model_config.proto, in its JSON form) that describes a Palisade model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// Name.
    pub name: String,
    /// Platform, as in the metadata.
    pub platform: String,
    /// 0: the model takes whole batches, and its dims include the batch dimension.
    pub max_batch_size: i32,
    /// Inputs.
    pub input: Vec<ConfigTensor>,
    /// Outputs, as the output policy shapes them.
    pub output: Vec<ConfigTensor>,
}

/// A tensor in a [`ModelConfig`].
#[derive(Debug, Clone, Serialize)]
pub struct ConfigTensor {
    /// Name.
    pub name: String,
    /// Triton's `DataType` name (`TYPE_FP32`, …).
    pub data_type: &'static str,
    /// Shape, `-1` where any size goes.
    pub dims: Vec<i64>,
}

#[derive(Default)]
struct Slot {
    /// Loaded versions, oldest first.
    versions: Vec<Arc<ServedModel>>,
    /// Index of the active version in `versions`.
    active: usize,
}

/// The served models. Reads take a short read lock and clone an `Arc`; a request keeps the
/// version it started with even if a swap happens meanwhile.
#[derive(Default)]
pub struct ModelRepository {
    slots: RwLock<HashMap<String, Slot>>,
}

impl std::fmt::Debug for ModelRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRepository")
            .field("models", &self.names())
            .finish()
    }
}

/// Why a repository operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// No such model.
    #[error("model '{0}' not found")]
    NotFound(String),
    /// The version exists already.
    #[error("model '{0}' already has a version '{1}'")]
    Exists(String, String),
    /// Nothing to roll back to.
    #[error("model '{0}' has no earlier version to roll back to")]
    NoPrevious(String),
    /// The active version is no longer the one the rollback was for (another changed it).
    #[error("model '{0}' is no longer served by version '{1}'")]
    Moved(String, String),
    /// The name is the path segment of every model's statistics.
    #[error(
        "no model may be called '{0}': GET /v2/models/{0} is the statistics of every model \
         (Triton's statistics extension)"
    )]
    Reserved(String),
}

impl ModelRepository {
    /// An empty repository.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a version and makes it the active one (hot swap).
    pub fn deploy(&self, model: ServedModel) -> Result<Arc<ServedModel>, RepositoryError> {
        if model.name == crate::oip::route::STATISTICS {
            return Err(RepositoryError::Reserved(model.name));
        }
        let mut slots = self.write();
        let slot = slots.entry(model.name.clone()).or_default();
        if slot.versions.iter().any(|v| v.version == model.version) {
            return Err(RepositoryError::Exists(model.name, model.version));
        }
        let m = Arc::new(model);
        slot.versions.push(m.clone());
        slot.active = slot.versions.len() - 1;
        Ok(m)
    }

    /// Unloads the active version and makes the one loaded before it active again. The version
    /// rolled back from is no longer served, not even when a request names it, until it is
    /// loaded again (under the same checks); a later rollback therefore never returns to it.
    pub fn rollback(&self, name: &str) -> Result<Arc<ServedModel>, RepositoryError> {
        self.rollback_from(name, None)
    }

    /// [`ModelRepository::rollback`], only while `from` (when given) is the active version.
    pub fn rollback_from(
        &self,
        name: &str,
        from: Option<&str>,
    ) -> Result<Arc<ServedModel>, RepositoryError> {
        let mut slots = self.write();
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| RepositoryError::NotFound(name.to_string()))?;
        if let Some(from) = from
            && slot.versions[slot.active].version != from
        {
            return Err(RepositoryError::Moved(name.to_string(), from.to_string()));
        }
        if slot.active == 0 {
            return Err(RepositoryError::NoPrevious(name.to_string()));
        }
        // `deploy` makes the newest version active and this removes it, so the active version
        // is always the last one.
        let removed = slot.versions.remove(slot.active);
        slot.active -= 1;
        let active = slot.versions[slot.active].clone();
        // Freeing a model (its plan and weights, when no request holds it any more) takes time:
        // not while every request's `get` waits for the lock.
        drop(slots);
        drop(removed);
        Ok(active)
    }

    /// Stops serving `name`, every version of it (Triton's unload): its versions, oldest first,
    /// for the caller to drop where freeing them is no trouble. A request under way keeps the
    /// version it holds.
    pub fn unload(&self, name: &str) -> Result<Vec<Arc<ServedModel>>, RepositoryError> {
        let slot = self
            .write()
            .remove(name)
            .ok_or_else(|| RepositoryError::NotFound(name.to_string()))?;
        Ok(slot.versions)
    }

    /// The active version, or the named one.
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<ServedModel>> {
        let slots = self.read();
        let slot = slots.get(name)?;
        match version {
            None => slot.versions.get(slot.active).cloned(),
            Some(v) => slot.versions.iter().find(|m| m.version == v).cloned(),
        }
    }

    /// Versions of a model, oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.served(name)
            .iter()
            .map(|m| m.version.clone())
            .collect()
    }

    /// The versions of a model served now, oldest first, read at one instant.
    pub fn served(&self, name: &str) -> Vec<Arc<ServedModel>> {
        self.read()
            .get(name)
            .map(|s| s.versions.clone())
            .unwrap_or_default()
    }

    /// The longest body deadline (`input.body_timeout_ms`) of the versions served of the models
    /// `include` accepts, or `None` when it accepts none: what a request's body may take before
    /// its model is known (gRPC, see [`crate::deadline::grpc_body_limit`]).
    pub fn longest_body_timeout(
        &self,
        include: impl Fn(&str) -> bool,
    ) -> Option<std::time::Duration> {
        self.read()
            .iter()
            .filter(|(name, _)| include(name))
            .flat_map(|(_, s)| s.versions.iter())
            .map(|m| std::time::Duration::from_millis(m.policy.input.body_timeout_ms))
            .max()
    }

    /// Names of the served models, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use palisade_core::{InputRange, LinearClassifier};

    use super::{ModelRepository, RepositoryError, ServedModel};
    use crate::policy::Policy;

    fn version(v: &str) -> ServedModel {
        let c = LinearClassifier::new(
            "t",
            vec![2],
            InputRange::default(),
            ndarray::Array2::zeros((2, 2)),
            ndarray::Array1::zeros(2),
        )
        .unwrap();
        ServedModel {
            name: "m".into(),
            version: v.into(),
            classifier: Arc::new(c),
            policy: Policy::default(),
            input_name: "x".into(),
            output_name: "y".into(),
            platform: "test".into(),
            stats: Default::default(),
        }
    }

    fn active(r: &ModelRepository) -> String {
        r.get("m", None).unwrap().version.clone()
    }

    #[test]
    fn a_rolled_back_version_is_no_longer_served_nor_returned_to() {
        let r = ModelRepository::new();
        for v in ["1", "2", "3"] {
            r.deploy(version(v)).unwrap();
        }
        assert_eq!(active(&r), "3");
        assert_eq!(r.rollback("m").unwrap().version, "2");
        // Not by name either.
        assert!(r.get("m", Some("3")).is_none());
        assert_eq!(r.versions("m"), ["1", "2"]);
        assert_eq!(r.rollback("m").unwrap().version, "1");
        // A version loaded after two rollbacks rolls back to 1, not to 3 or 2.
        r.deploy(version("4")).unwrap();
        assert_eq!(r.rollback("m").unwrap().version, "1");
        assert_eq!(
            r.rollback("m").unwrap_err(),
            RepositoryError::NoPrevious("m".into())
        );
        assert_eq!(active(&r), "1");
        // A version rolled back from can be loaded again.
        r.deploy(version("3")).unwrap();
        assert_eq!(active(&r), "3");
        assert_eq!(
            r.rollback("x").unwrap_err(),
            RepositoryError::NotFound("x".into())
        );
    }

    /// An unloaded model is not served, under any version, and a request that held a version
    /// keeps it; deployed again, the model starts afresh from that version.
    #[test]
    fn an_unloaded_model_is_served_no_more_until_deployed_again() {
        let r = ModelRepository::new();
        for v in ["1", "2"] {
            r.deploy(version(v)).unwrap();
        }
        let held = r.get("m", None).unwrap();
        let gone = r.unload("m").unwrap();
        assert_eq!(
            gone.iter().map(|m| m.version.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert!(r.get("m", None).is_none() && r.get("m", Some("1")).is_none());
        assert!(r.names().is_empty());
        assert_eq!(held.version, "2");
        assert_eq!(
            r.unload("m").unwrap_err(),
            RepositoryError::NotFound("m".into())
        );
        r.deploy(version("2")).unwrap();
        assert_eq!(r.versions("m"), ["2"]);
        assert_eq!(
            r.rollback("m").unwrap_err(),
            RepositoryError::NoPrevious("m".into())
        );
    }

    /// A library caller deploying a model called `stats` is refused as the loader refuses it.
    #[test]
    fn no_model_called_stats_is_deployed() {
        let r = ModelRepository::new();
        let mut m = version("1");
        m.name = "stats".into();
        let err = r.deploy(m).unwrap_err();
        assert_eq!(err, RepositoryError::Reserved("stats".into()));
        assert!(err.to_string().contains("statistics"), "{err}");
        assert!(r.names().is_empty());
    }
}

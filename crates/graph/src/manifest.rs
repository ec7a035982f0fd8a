//! `manifest.json`: what `cleave split` writes beside the parts, and what a device or server
//! reads to run them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::TensorSpec;

/// The description of a split model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format tag, [`Manifest::FORMAT`].
    pub format: String,
    pub model: ModelSummary,
    /// The cut indices the model was split at (positions in `cleave inspect`'s list).
    pub cuts: Vec<usize>,
    pub parts: Vec<PartManifest>,
    /// One per cut: the tensors crossing it.
    pub boundaries: Vec<Boundary>,
    /// Free-form additions by later stages (export formats, exits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Manifest {
    /// The current format tag.
    pub const FORMAT: &'static str = "cleave-split/1";

    /// Parses a manifest, checking its format tag.
    pub fn from_json(s: &str) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(s).map_err(|e| format!("invalid manifest.json: {e}"))?;
        if m.format != Self::FORMAT {
            return Err(format!("manifest format `{}` is not `{}`", m.format, Self::FORMAT));
        }
        Ok(m)
    }
}

/// The original model, as split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// How many candidate cuts the model has at these shapes.
    pub num_cuts: usize,
    /// The shapes the inputs were pinned to.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
}

/// One part file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartManifest {
    pub index: usize,
    /// File name, relative to the manifest.
    pub file: String,
    pub from_cut: usize,
    pub to_cut: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Original model outputs this part computes.
    pub model_outputs: Vec<String>,
    pub flops: u64,
    pub param_bytes: u64,
}

/// The tensors crossing one cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boundary {
    pub cut: usize,
    pub bytes: u64,
    pub tensors: Vec<BoundaryTensor>,
}

/// A tensor crossing a cut, and which part computes it (`None`: a model input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundaryTensor {
    #[serde(flatten)]
    pub spec: TensorSpec,
    pub produced_by: Option<usize>,
}

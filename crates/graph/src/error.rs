//! Errors of the graph crate. Every message is one line that names the problem.

use thiserror::Error;

/// Everything that can go wrong while loading, analysing or cutting a model.
#[derive(Debug, Error)]
pub enum GraphError {
    /// The bytes are not a protobuf-encoded ONNX `ModelProto`.
    #[error("not a valid ONNX model (protobuf decoding failed: {0}); is the file truncated or not ONNX?")]
    Decode(String),

    /// The model decodes but has no graph (an empty file decodes to this).
    #[error("not a valid ONNX model: it has no graph (empty or not an ONNX file?)")]
    NoGraph,

    /// The model's structure is inconsistent.
    #[error("malformed ONNX graph: {0}")]
    Malformed(String),

    /// An operator the engine cannot run.
    #[error("operator `{op}`{domain} used by node `{node}` is not supported by the tract engine")]
    UnsupportedOp { op: String, domain: String, node: String },

    /// A feature of the ONNX format cleave does not handle yet.
    #[error("unsupported ONNX feature: {0}")]
    Unsupported(String),

    /// A tensor of an element type cleave cannot handle.
    #[error("tensor `{tensor}` has element type {dtype}, which cleave does not handle")]
    UnsupportedDtype { tensor: String, dtype: String },

    /// An input dimension that is symbolic and was not pinned.
    #[error("input `{input}` has an unresolved dimension {axis} (`{symbol}`); pin it, e.g. --shape {input}={example}")]
    UnresolvedDim { input: String, axis: usize, symbol: String, example: String },

    /// A shape override names no input.
    #[error("--shape names `{name}`, which is not an input of this model (inputs: {inputs})")]
    UnknownInput { name: String, inputs: String },

    /// A shape override that contradicts the model.
    #[error("--shape {input}: {reason}")]
    BadShape { input: String, reason: String },

    /// tract's type and shape analysis failed.
    #[error("shape analysis failed: {0}")]
    Analysis(String),

    /// A cut index outside the enumerated cuts.
    #[error("cut {index} is out of range: this model has cuts 0..={max} (see `cleave inspect`)")]
    CutOutOfRange { index: usize, max: usize },

    /// Cut indices that do not make non-empty parts.
    #[error("{0}")]
    BadCuts(String),

    /// The engine panicked on this model; reported as an error instead of crashing.
    #[error("the engine failed on this model: {0}")]
    EnginePanic(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;

/// Runs `f`, turning a panic inside tract into [`GraphError::EnginePanic`].
pub(crate) fn catch_engine_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(GraphError::EnginePanic(msg))
        }
    }
}

/// Formats an anyhow/tract error chain on one line.
pub(crate) fn chain(e: &impl std::fmt::Display) -> String {
    format!("{e:#}").replace('\n', " ")
}

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

    /// An early-exit declaration that does not fit the model.
    #[error("early exit: {0}")]
    BadExit(String),

    /// The engine panicked on this model; reported as an error instead of crashing.
    #[error("the engine failed on this model: {0}")]
    EnginePanic(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;

thread_local! {
    static IN_ENGINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside a call into the inference engine guarded by
/// [`guard_engine`]. A process-wide panic hook can use it to stay silent about panics that the
/// guard will turn into errors (the `cleave` binary does; the fuzz targets let every other
/// panic abort).
pub fn in_engine_call() -> bool {
    IN_ENGINE.with(|f| f.get())
}

/// Runs `f` (a call into tract), turning a panic into `Err(message)`. Only engine calls are
/// guarded: a panic in cleave's own code is a bug and must stay visible.
pub fn guard_engine<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let outer = IN_ENGINE.with(|flag| flag.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_ENGINE.with(|flag| flag.set(outer));
    r.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())
    })
}

/// [`guard_engine`] for engine calls returning this crate's results.
pub(crate) fn catch_engine_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    guard_engine(f).unwrap_or_else(|msg| Err(GraphError::EnginePanic(msg)))
}

/// Formats an anyhow/tract error chain on one line.
pub(crate) fn chain(e: &impl std::fmt::Display) -> String {
    format!("{e:#}").replace('\n', " ")
}

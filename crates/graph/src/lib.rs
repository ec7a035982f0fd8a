//! # cleave-graph
//!
//! Loads an ONNX model, analyses it with tract (every tensor's type and shape, every node's
//! cost), enumerates the places it can be cut, and writes the pieces between cuts as standalone
//! ONNX models.
//!
//! This crate is pure: it takes bytes and returns values. It does no file or network I/O and
//! spawns no threads.
//!
//! ```no_run
//! use cleave_graph::{InputShapes, ModelGraph};
//! # fn main() -> Result<(), cleave_graph::GraphError> {
//! let bytes: Vec<u8> = vec![]; // an ONNX file's contents
//! let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none())?;
//! for cut in graph.cuts() {
//!     println!("cut {}: {} tensors, {} bytes", cut.index, cut.tensors.len(), cut.bytes);
//! }
//! let split = graph.split(&[12])?; // two parts, and a manifest
//! # Ok(()) }
//! ```
//!
//! ## Vocabulary
//! - A *compute node* is an ONNX node that runs at inference time. Nodes that only compute
//!   weights or shape arithmetic from constants are *static* and travel with the parts that read
//!   them.
//! - Cut `k` lies after the first `k` compute nodes in execution order; see [`cuts`].
//! - A [`Part`] is the model between two cuts, with the original tensor names at its boundary.

pub mod build;
pub mod cuts;
pub mod dtype;
pub mod error;
pub mod export;
pub mod manifest;
pub mod model;
pub mod opcost;
pub mod part;
mod tensor;

pub use cuts::Cut;
pub use dtype::DType;
pub use error::{GraphError, Result};
pub use export::{ExportManifest, ExportedTail, QuantParams, WireDType};
pub use manifest::Manifest;
pub use model::{
    EXITS_KEY, InputShapes, ModelGraph, NodeInfo, TensorId, TensorInfo, TensorKind, TensorSpec, parse_exit_list,
    sha256_hex,
};
pub use opcost::OpCost;
pub use part::{Part, Split, part_bounds};

/// Re-export of the ONNX protobuf types (prost) used for graph surgery.
pub use tract_onnx::pb;

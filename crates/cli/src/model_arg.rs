//! The MODEL argument shared by every command: a path, or the built-in demo model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cleave_graph::{InputShapes, ModelGraph};

/// The built-in demo model (`models/tiny_resnet.onnx`, made by `cleave-graph`'s builder).
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../../models/tiny_resnet.onnx");
pub const DEFAULT_MODEL_NAME: &str = "tiny_resnet (built in)";

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// ONNX model file. Without it, the built-in tiny-resnet demo model is used.
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,

    /// Pin an input's shape, e.g. `--shape x=1,3,48,192` (repeatable). A symbolic batch
    /// dimension defaults to 1; any other symbolic dimension must be pinned.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,

    /// Declare the model's early-exit outputs (comma-separated, e.g. `--exits exit_1,exit_2`),
    /// replacing its `cleave.exits` metadata. An exit is an output a device may answer with
    /// when it is confident, before the final output is computed.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub exits: Option<Vec<String>>,
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    InputShapes::parse_one(s)
}

/// A loaded model and where it came from.
pub struct Loaded {
    pub graph: ModelGraph,
    pub source: String,
    pub bytes: Vec<u8>,
}

impl ModelArgs {
    pub fn input_shapes(&self) -> InputShapes {
        InputShapes(self.shapes.iter().cloned().collect())
    }

    /// Reads and analyses the model.
    pub fn load(&self) -> Result<Loaded> {
        let (bytes, source) = match &self.model {
            Some(p) => {
                let bytes = std::fs::read(p).with_context(|| format!("cannot read model {}", p.display()))?;
                (bytes, p.display().to_string())
            }
            None => {
                tracing::info!("no MODEL given: using the built-in tiny-resnet demo model");
                (DEFAULT_MODEL.to_vec(), DEFAULT_MODEL_NAME.to_string())
            }
        };
        let mut graph =
            ModelGraph::from_bytes(&bytes, &self.input_shapes()).with_context(|| format!("model {source}"))?;
        if let Some(exits) = &self.exits {
            graph.set_exits(exits.clone()).with_context(|| format!("--exits for model {source}"))?;
        }
        Ok(Loaded { graph, source, bytes })
    }
}

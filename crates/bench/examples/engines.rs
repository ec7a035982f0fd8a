//! Runs [`cleave_bench::engines::bench_engines`] until `cleave bench engines` exists:
//!
//! ```text
//! cargo run --release -p cleave-bench --features ort --example engines -- \
//!     [--threads N] [--repeats N] [--randomize] [--json FILE] MODEL.onnx...
//! ```
//!
//! `--randomize` first gives each model seeded random weights and exposes its logits
//! (cleave-testkit), so that outputs depend on the input and the engines' agreement means
//! something on placeholder-weight models such as `shared/models/light/*`; the randomized copies
//! are written to a temporary folder. onnxruntime comes from `ORT_DYLIB_PATH`, else from the
//! `onnxruntime` Python package.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cleave_graph::{InputShapes, ModelGraph};
use prost::Message;

fn main() -> Result<()> {
    let (mut threads, mut repeats, mut randomize, mut json) = (1, 20, false, None);
    let mut models: Vec<(String, PathBuf)> = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--threads" => threads = value("--threads")?.parse().context("--threads")?,
            "--repeats" => repeats = value("--repeats")?.parse().context("--repeats")?,
            "--randomize" => randomize = true,
            "--json" => json = Some(value("--json")?),
            _ if a.starts_with("--") => bail!("unknown option {a}"),
            _ => {
                let path = PathBuf::from(&a);
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or(&a).to_owned();
                models.push((name, path));
            }
        }
    }
    if models.is_empty() {
        bail!("usage: engines [--threads N] [--repeats N] [--randomize] [--json FILE] MODEL.onnx...");
    }
    let tmp = std::env::temp_dir().join(format!("cleave-engines-{}", std::process::id()));
    if randomize {
        std::fs::create_dir_all(&tmp)?;
        for (name, path) in &mut models {
            let bytes = std::fs::read(&*path).with_context(|| format!("reading {}", path.display()))?;
            let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none())?;
            let proto = cleave_testkit::expose_logits(&cleave_testkit::randomize_weights(graph.proto(), &graph, 42));
            *path = tmp.join(format!("{name}.onnx"));
            std::fs::write(&*path, proto.encode_to_vec())?;
        }
    }
    let report = cleave_bench::engines::bench_engines(&models, threads, repeats);
    if randomize {
        std::fs::remove_dir_all(&tmp).ok();
    }
    let report = report?;
    println!("{}", report.render());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

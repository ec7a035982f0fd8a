//! `cleave split`: write the parts of a model.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::model_arg::ModelArgs;
use crate::output::{human_bytes, mflops, table};

/// Write the parts of a model cut at one or more cuts, plus a manifest.
///
/// With `--cut N` the model becomes part0.onnx (the head, for the device) and part1.onnx (the
/// tail, for the server); `--cut N --cut M` gives three parts (device → edge → cloud). Each part
/// is a standalone ONNX model carrying only the weights it uses, loadable by tract or
/// onnxruntime. manifest.json records, for each part and each boundary, the tensor names, dtypes
/// and shapes, and which original outputs each part produces. Cut indices come from `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Cut index (repeatable, increasing). See `cleave inspect MODEL`.
    #[arg(long = "cut", value_name = "N", required = true)]
    pub cuts: Vec<usize>,

    /// Output directory (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let g = &loaded.graph;
    let split = g.split(&args.cuts)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut t = table(&["file", "cuts", "inputs", "outputs", "MFLOPs", "weights", "file size"], &[4, 5, 6]);
    for (p, m) in split.parts.iter().zip(&split.manifest.parts) {
        let bytes = p.to_bytes();
        let path = args.output.join(&m.file);
        std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        t.add_row(vec![
            m.file.clone(),
            format!("{}..{}", p.from_cut, p.to_cut),
            p.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            p.outputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            mflops(p.cost.flops),
            human_bytes(p.param_bytes),
            human_bytes(bytes.len() as u64),
        ]);
    }
    let manifest = serde_json::to_string_pretty(&split.manifest)?;
    let mpath = args.output.join("manifest.json");
    std::fs::write(&mpath, &manifest).with_context(|| format!("cannot write {}", mpath.display()))?;
    if args.json {
        println!("{manifest}");
    } else {
        println!("{t}");
        for b in &split.manifest.boundaries {
            println!("cut {:>4}: {} crossing in {} tensor(s)", b.cut, human_bytes(b.bytes), b.tensors.len());
        }
        println!("wrote {} parts and manifest.json to {}", split.parts.len(), args.output.display());
    }
    Ok(())
}

//! `cleave export`: a model repository of tails for Triton, KServe or MLServer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cleave_graph::export::{
    ExportManifest, QuantParams, TailManifest, WireDType, kserve_inference_service, mlserver_settings, tail_model_name,
    triton_config,
};
use cleave_graph::manifest::ModelSummary;
use cleave_graph::sha256_hex;

use crate::model_arg::ModelArgs;
use crate::output::{human_bytes, table};

/// The MLServer runtime written beside the tails: it runs an ONNX file with onnxruntime.
const MLSERVER_RUNTIME: &str = include_str!("../../../../tests/interop/mlserver/cleave_onnx_runtime.py");
const MLSERVER_IMPLEMENTATION: &str = "cleave_onnx_runtime.OnnxRuntimeModel";

/// The server a repository is written for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Triton: DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx.
    Triton,
    /// KServe: the Triton layout plus DIR/inferenceservice.yaml (KServe's Triton runtime).
    Kserve,
    /// MLServer: DIR/<name>/model-settings.json, model.onnx and the runtime
    /// cleave_onnx_runtime.py (onnxruntime), and DIR/settings.json (parallel_workers 0).
    Mlserver,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Triton => "triton",
            Format::Kserve => "kserve",
            Format::Mlserver => "mlserver",
        }
    }
}

/// Write the tails of a model as a model repository for Triton, KServe or MLServer.
///
/// For each cut and each wire datatype, the tail after the cut becomes a standalone ONNX model
/// that any Open Inference Protocol server running ONNX can serve unchanged. Its inputs are the
/// tensors crossing the cut, under their ONNX names, in a standard datatype:
///   fp32   as they are;
///   fp16   cast back to float inside the tail;
///   uint8  dequantized inside the tail, (q − zero_point) · scale (DequantizeLinear; Cast, Sub
///          and Mul at opsets below 10), with the scale (FP32 [1]) and zero point (UINT8 [1]) as
///          extra inputs `<tensor>_scale` and `<tensor>_zero_point`, so each request carries
///          its frame's own values; or fixed with --scale and --zero-point.
/// int4 and int2 have no standard datatype: they stay cleave-to-cleave codecs (`cleave serve`).
///
/// Tails are named `<model>_tail_c<N>` (fp32), `<model>_tail_c<N>_fp16` and
/// `<model>_tail_c<N>_uint8`. Beside them the export holds the device's side: `head_c<N>.onnx`
/// (the model up to cut N) and `manifest.json` (cleave-export/1: every tail's name, cut,
/// datatype, inputs and outputs, and each file's sha256). With them `cleave run --edge-kind
/// oip --export DIR` needs no MODEL: it runs the head file, and the fp32 tail as its local
/// fallback (keep fp32 in --dtypes for that). Parts are exported at the pinned input shapes,
/// batch included: `max_batch_size` is 0.
///
/// Examples:
///   cleave export model.onnx --cuts 3,7,12 --format triton -o repo
///   cleave export model.onnx --cuts 7 --dtypes fp32,uint8 --format mlserver -o repo
///   cleave export model.onnx --cuts 7 --format kserve --storage-uri s3://models/cleave -o repo
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Cut indices, comma-separated (see `cleave inspect`); 0 exports the whole model.
    #[arg(long, value_delimiter = ',', required = true)]
    pub cuts: Vec<usize>,

    /// The server the repository is for.
    #[arg(long, value_enum)]
    pub format: Format,

    /// Wire datatypes of the boundary tensors, comma-separated: fp32, fp16, uint8 (int4 and
    /// int2 are cleave-to-cleave codecs and cannot be exported).
    #[arg(long, value_delimiter = ',', default_value = "fp32")]
    pub dtypes: Vec<WireDType>,

    /// With uint8: a fixed scale, baked into the tail (needs --zero-point). Without it each
    /// request sends its own.
    #[arg(long, requires = "zero_point")]
    pub scale: Option<f32>,

    /// With uint8: a fixed zero point (0..255, needs --scale).
    #[arg(long, requires = "scale")]
    pub zero_point: Option<u8>,

    /// The model's base name on the server (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,

    /// With --format kserve: where the repository will be uploaded (the InferenceService's
    /// storageUri).
    #[arg(long, default_value = "s3://CHANGE-ME/cleave")]
    pub storage_uri: String,

    /// Output directory (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let g = &loaded.graph;
    if args.cuts.is_empty() {
        bail!("--cuts: give at least one cut");
    }
    if args.dtypes.is_empty() {
        bail!("--dtypes: give at least one of fp32, fp16, uint8");
    }
    if args.scale.is_some() && !args.dtypes.contains(&WireDType::Uint8) {
        bail!("--scale and --zero-point apply to uint8 tails: add uint8 to --dtypes");
    }
    let base = args.name.clone().unwrap_or_else(|| match &args.model.model {
        Some(p) => p.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned(),
        None => "tiny_resnet".to_owned(),
    });
    let quant = match (args.scale, args.zero_point) {
        (Some(scale), Some(zero_point)) => QuantParams::Const { scale, zero_point },
        _ => QuantParams::Inputs,
    };
    let dir = &args.output;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut t = table(&["model name", "cut", "dtype", "inputs", "outputs", "prologue", "file size"], &[1, 6]);
    let mut tails = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for &cut in &args.cuts {
        if !seen.insert(cut) {
            bail!("--cuts lists cut {cut} twice");
        }
        let head = if cut == 0 {
            None
        } else {
            g.check_cut(cut).with_context(|| format!("--cuts {cut}"))?;
            let head = g.part(0, cut).with_context(|| format!("the head before cut {cut}"))?;
            let file = format!("head_c{cut}.onnx");
            let bytes = head.to_bytes();
            write(&dir.join(&file), &bytes)?;
            Some((file, sha256_hex(&bytes)))
        };
        for &dtype in &args.dtypes {
            let name = tail_model_name(&base, cut, dtype);
            let q = (dtype == WireDType::Uint8).then_some(quant);
            let tail = g.export_tail(cut, dtype, q, &name).with_context(|| format!("the tail after cut {cut}"))?;
            let bytes = tail.to_bytes();
            let file = match args.format {
                Format::Triton | Format::Kserve => {
                    write(&dir.join(&name).join("config.pbtxt"), triton_config(&tail).as_bytes())?;
                    format!("{name}/1/model.onnx")
                }
                Format::Mlserver => {
                    let settings = serde_json::to_string_pretty(&mlserver_settings(&tail, MLSERVER_IMPLEMENTATION))?;
                    write(&dir.join(&name).join("model-settings.json"), settings.as_bytes())?;
                    // MLServer imports the runtime from the model's own folder.
                    write(&dir.join(&name).join("cleave_onnx_runtime.py"), MLSERVER_RUNTIME.as_bytes())?;
                    format!("{name}/model.onnx")
                }
            };
            write(&dir.join(&file), &bytes)?;
            t.add_row(vec![
                name.clone(),
                cut.to_string(),
                dtype.to_string(),
                tail.inputs.iter().map(|i| i.spec.name.as_str()).collect::<Vec<_>>().join(", "),
                tail.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", "),
                tail.prologue.clone().unwrap_or_else(|| "-".into()),
                human_bytes(bytes.len() as u64),
            ]);
            tails.push(TailManifest {
                cut,
                name,
                dtype,
                quant: tail.quant,
                prologue: tail.prologue,
                head: head.as_ref().map(|h| h.0.clone()),
                head_sha256: head.as_ref().map(|h| h.1.clone()),
                sha256: Some(sha256_hex(&bytes)),
                file,
                inputs: tail.inputs,
                outputs: tail.outputs,
            });
        }
    }
    match args.format {
        Format::Kserve => write(
            &dir.join("inferenceservice.yaml"),
            kserve_inference_service(&format!("{base}-tails"), &args.storage_uri).as_bytes(),
        )?,
        // MLServer 1.7.1's worker pool (parallel_workers ≥ 1, its default) crashed here at start
        // ("There is no current event loop"): run inference in the server process.
        Format::Mlserver => write(&dir.join("settings.json"), b"{\n  \"parallel_workers\": 0\n}\n")?,
        Format::Triton => {}
    }
    let summary = ModelSummary {
        name: g.name().to_owned(),
        sha256: g.sha256().to_owned(),
        inputs: g.inputs(),
        outputs: g.outputs(),
        num_cuts: g.num_cuts(),
        input_shapes: g.input_shapes().0.clone(),
    };
    let manifest = ExportManifest {
        format: ExportManifest::FORMAT.into(),
        server: args.format.name().into(),
        model: summary,
        tails,
    };
    write(&dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    println!("{t}");
    println!(
        "wrote {} tail(s) for {}, the heads and manifest.json to {}",
        manifest.tails.len(),
        args.format.name(),
        dir.display()
    );
    Ok(())
}

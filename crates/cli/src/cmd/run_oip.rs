//! `cleave run --edge-kind oip`: offload to a foreign Open Inference Protocol server serving
//! the tails `cleave export` wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cleave_codec::Codec;
use cleave_engine::{Engine, EngineConfig};
use cleave_graph::export::{ExportManifest, QuantParams, TailManifest, WireDType, tail_model_name};
use cleave_graph::{InputShapes, ModelGraph, TensorSpec, sha256_hex};
use cleave_node::{ExportParts, FrameStatus, LocalModel, OipConfig, OipDevice, RunSummary, ServerTimes};
use serde_json::json;

use crate::cmd::run::Args;
use crate::npy;
use crate::output::{human_bytes, table};

pub fn run(args: Args) -> Result<()> {
    let cut: usize = args.cut.parse().map_err(|_| {
        anyhow::anyhow!(
            "--edge-kind oip needs a fixed --cut N (a cut the tails were exported at), not `{}`: a foreign server serves only the exported tails",
            args.cut
        )
    })?;
    let dtype = match args.codec.unwrap_or(Codec::Fp32) {
        Codec::Fp32 => WireDType::Fp32,
        Codec::Fp16 => WireDType::Fp16,
        Codec::Int8 => WireDType::Uint8,
        c => bail!(
            "--codec {c} is a cleave-to-cleave codec: an OIP server takes fp32, fp16 or int8 (sent as UINT8 with its scale and zero point); use `cleave serve` for {c}"
        ),
    };
    let refused = [
        (args.per_channel, "--per-channel (the exported uint8 tails dequantize per tensor)"),
        (args.lz4, "--lz4 (not a standard datatype)"),
        (args.exit.is_some(), "--exit"),
        (args.calibration.is_some(), "--calibration"),
        (args.max_accuracy_drop.is_some(), "--max-accuracy-drop"),
        (args.codecs.is_some(), "--codecs"),
        (args.cuts.is_some(), "--cuts"),
        (args.records.is_some(), "--records"),
        (args.device_slowdown != 1.0, "--device-slowdown"),
        (args.server_profile.is_some(), "--server-profile"),
        (args.device_profile.is_some(), "--device-profile"),
    ];
    if let Some((_, flag)) = refused.iter().find(|(set, _)| *set) {
        bail!("{flag} is not supported with --edge-kind oip");
    }
    if let Some(fps) = args.fps
        && !(fps.is_finite() && fps > 0.0)
    {
        bail!("--fps {fps} must be a positive number");
    }
    let (local, model_name, inputs, quant) = match (&args.model.model, &args.export) {
        // The export alone: its head file, and its fp32 tail as the fallback.
        (None, Some(dir)) => {
            if !args.model.shapes.is_empty() || args.model.exits.is_some() {
                bail!("--shape and --exits need MODEL: an export's parts have the shapes they were exported at");
            }
            let (m, path) = read_manifest(dir)?;
            let t = export_tail(&m, dir, cut, dtype)?;
            let parts = load_parts(&m, dir, cut)?;
            if parts.fp32_tail.is_none() && !args.json {
                eprintln!(
                    "warning: {} has no fp32 tail at cut {cut}: a frame no server answers in time fails (export with --dtypes including fp32)",
                    path.display()
                );
            }
            (
                LocalModel::Parts(parts),
                args.model_name.clone().unwrap_or_else(|| t.name.clone()),
                t.inputs.clone(),
                t.quant,
            )
        }
        (_, export) => {
            let loaded = args.model.load()?;
            let graph = Arc::new(loaded.graph);
            graph.check_cut(cut).context("--cut")?;
            if cut >= graph.last_cut() {
                bail!("--cut {cut} is the last cut: nothing is offloaded (cuts 0..{} have a tail)", graph.last_cut());
            }
            let stem = match &args.model.model {
                Some(p) => p.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned(),
                None => "tiny_resnet".to_owned(),
            };
            // The tail: as the export's manifest describes it, or as `cleave export` would write it.
            let (model_name, inputs, quant) = match export {
                Some(dir) => {
                    let (m, _) = read_manifest(dir)?;
                    if m.model.sha256 != graph.sha256() {
                        bail!(
                            "--export {}: it was exported from another model file (sha256 {}…, this one {}…)",
                            dir.display(),
                            &m.model.sha256.get(..12).unwrap_or(&m.model.sha256),
                            &graph.sha256().get(..12).unwrap_or(graph.sha256())
                        );
                    }
                    let t = export_tail(&m, dir, cut, dtype)?;
                    (args.model_name.clone().unwrap_or_else(|| t.name.clone()), t.inputs.clone(), t.quant)
                }
                None => {
                    let name = args.model_name.clone().unwrap_or_else(|| tail_model_name(&stem, cut, dtype));
                    let q = (dtype == WireDType::Uint8).then_some(QuantParams::Inputs);
                    let tail = graph.export_tail(cut, dtype, q, &name)?;
                    (name, tail.inputs, tail.quant)
                }
            };
            (LocalModel::Whole(graph), model_name, inputs, quant)
        }
    };
    let frames = crate::cmd::run::frames_for(&args, &local.inputs())?;
    let timeout = args.timeout.unwrap_or(Duration::from_secs(5));
    let security = crate::cmd::run::security(&args)?;
    let engine = Arc::new(Engine::new(EngineConfig { threads: args.threads, cache_capacity: 8 }));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // No server reachable is no error: the device answers locally until one comes up.
        let endpoints = Arc::new(crate::cmd::run::connect_some(&args, &security, &model_name, false).await?);
        let base_rtt = match endpoints.current() {
            Some((_, mut client)) => client.rtt(5).await.context("measuring the RTT (ServerLive)")?,
            None => {
                if !args.json {
                    eprintln!(
                        "warning: no server is reachable at {}: every frame runs locally until one comes up",
                        args.edge.join(", ")
                    );
                }
                Duration::ZERO
            }
        };
        let config =
            OipConfig { model_name: model_name.clone(), cut, dtype, inputs, quant, timeout, check: args.check };
        let device = Arc::new(OipDevice::new(engine, local, endpoints, config, base_rtt).map_err(anyhow::Error::msg)?);
        if let Some(first) = frames.first() {
            let (d, f) = (device.clone(), first.clone());
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || d.measure_local_tail(&f)).await {
                tracing::warn!("cannot time the local tail: {e}");
            }
        }
        if !args.json {
            eprintln!(
                "offloading cut {cut} as {dtype} to model `{model_name}` at {} (OIP); base RTT {:.2} ms",
                args.edge.join(", "),
                base_rtt.as_secs_f64() * 1e3
            );
        }
        let t0 = Instant::now();
        let mut results = Vec::with_capacity(frames.len());
        for (k, inputs) in frames.into_iter().enumerate() {
            if let Some(fps) = args.fps {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(k as f64 / fps)).into()).await;
            }
            results.push(device.frame(k, inputs).await);
        }
        let outputs: Vec<_> = results.iter().map(|f| f.output.clone()).collect();
        let summary = RunSummary::of(&outputs, t0.elapsed());
        if let (Some(path), Some(last)) = (&args.output, results.last()) {
            npy::write_outputs(path, &last.output.outputs)?;
        }
        let worst = |f: fn(&cleave_node::oip::OipCheck) -> f64| {
            results
                .iter()
                .filter_map(|r| r.check.as_ref().map(f))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        let max_vs_whole = worst(|c| c.vs_whole);
        let max_vs_tail = worst(|c| c.vs_local_tail);
        let max_bound = worst(|c| c.boundary_error_vs_bound);
        if args.json {
            let v = json!({
                "model": model_name,
                "edge": args.edge,
                "edge_kind": "oip",
                "cut": cut,
                "dtype": dtype,
                "base_rtt_ms": base_rtt.as_secs_f64() * 1e3,
                "summary": summary,
                "check": args.check.then(|| json!({
                    "max_vs_whole": max_vs_whole,
                    "max_vs_local_tail": max_vs_tail,
                    "max_boundary_error_vs_bound": max_bound,
                })),
                "frames": results.iter().map(|f| json!({
                    "record": f.output.record,
                    "server_times": f.server_times,
                    "check": f.check,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let mut t = table(
            &["frame", "status", "sent", "head ms", "rpc ms", "queue ms", "server ms", "times", "total ms", "check"],
            &[0, 2, 3, 4, 5, 6, 8],
        );
        for f in &results {
            let r = &f.output.record;
            t.add_row(vec![
                r.frame.to_string(),
                match r.status {
                    FrameStatus::Remote => "remote".into(),
                    _ => format!("LOCAL ({})", r.error.as_deref().unwrap_or("?")),
                },
                human_bytes(r.bytes_up),
                format!("{:.2}", r.head_ms),
                format!("{:.2}", r.rpc_ms),
                r.queue_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                r.compute_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                match f.server_times {
                    Some(ServerTimes::Reported) => "reported".into(),
                    Some(ServerTimes::Inferred) => "inferred".into(),
                    None => "-".into(),
                },
                format!("{:.2}", r.total_ms),
                f.check
                    .as_ref()
                    .map(|c| {
                        format!(
                            "tail {:.1e}, whole {:.1e}, codec {:.2}× bound",
                            c.vs_local_tail, c.vs_whole, c.boundary_error_vs_bound
                        )
                    })
                    .unwrap_or_default(),
            ]);
        }
        println!("{t}");
        println!(
            "{} frames: {} remote, {} local fallback; latency p50 {:.2} ms, p95 {:.2} ms; {:.1} frames/s; sent {}",
            summary.frames,
            summary.remote,
            summary.local_fallback,
            summary.p50_ms,
            summary.p95_ms,
            summary.fps,
            human_bytes(summary.bytes_up)
        );
        Ok(())
    })
}

fn read_manifest(dir: &Path) -> Result<(ExportManifest, PathBuf)> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("--export: cannot read {}", path.display()))?;
    let m = ExportManifest::from_json(&text).map_err(anyhow::Error::msg).with_context(|| path.display().to_string())?;
    Ok((m, path))
}

/// The tail the server serves for `cut` and `dtype`.
fn export_tail<'m>(m: &'m ExportManifest, dir: &Path, cut: usize, dtype: WireDType) -> Result<&'m TailManifest> {
    m.tail(cut, dtype).with_context(|| {
        let have: Vec<String> = m.tails.iter().map(|t| format!("cut {} {}", t.cut, t.dtype)).collect();
        format!("--export {} has no {dtype} tail at cut {cut} (it has: {})", dir.display(), have.join(", "))
    })
}

/// Reads one of the export's ONNX files, checked against the manifest: its sha256 when the
/// manifest records one, then its inputs (names, datatypes and shapes: all of `inputs`, or
/// with `some_inputs` some of them, as a head may not read every model input) and outputs.
fn load_part(
    dir: &Path,
    file: &str,
    sha256: Option<&str>,
    (inputs, some_inputs): (&[TensorSpec], bool),
    outputs: Option<&[TensorSpec]>,
) -> Result<ModelGraph> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_context(|| format!("--export: cannot read {}", path.display()))?;
    if let Some(want) = sha256 {
        let got = sha256_hex(&bytes);
        if got != want {
            bail!(
                "{}: its sha256 is {}…, the manifest says {}…: the file changed after the export",
                path.display(),
                got.get(..12).unwrap_or(&got),
                want.get(..12).unwrap_or(want)
            );
        }
    }
    // Parts are exported at pinned shapes: nothing to pin here.
    let g = ModelGraph::from_bytes(&bytes, &InputShapes::none()).with_context(|| path.display().to_string())?;
    let show = |v: &[TensorSpec]| {
        v.iter().map(|t| format!("{} {} {:?}", t.name, t.dtype, t.shape)).collect::<Vec<_>>().join(", ")
    };
    let fits = if some_inputs { g.inputs().iter().all(|i| inputs.contains(i)) } else { g.inputs() == inputs };
    if !fits {
        bail!("{}: its inputs are [{}], the manifest says [{}]", path.display(), show(&g.inputs()), show(inputs));
    }
    if let Some(outputs) = outputs
        && g.outputs() != outputs
    {
        bail!("{}: its outputs are [{}], the manifest says [{}]", path.display(), show(&g.outputs()), show(outputs));
    }
    Ok(g)
}

/// The device's side of the export at `cut`: the head file and, when the export has one, the
/// fp32 tail, each checked against the manifest.
fn load_parts(m: &ExportManifest, dir: &Path, cut: usize) -> Result<ExportParts> {
    let any = m
        .tails
        .iter()
        .find(|t| t.cut == cut)
        .with_context(|| format!("--export {} has no tail at cut {cut}", dir.display()))?;
    let head = match (&any.head, cut) {
        (_, 0) => None,
        (None, _) => bail!("--export {}: the manifest names no head file for cut {cut}", dir.display()),
        (Some(file), _) => {
            Some(Arc::new(load_part(dir, file, any.head_sha256.as_deref(), (&m.model.inputs, true), None)?))
        }
    };
    let fp32_tail = match m.tail(cut, WireDType::Fp32) {
        None => None,
        Some(t) => {
            let specs: Vec<TensorSpec> = t.inputs.iter().map(|i| i.spec.clone()).collect();
            let g = load_part(dir, &t.file, t.sha256.as_deref(), (&specs, false), Some(&t.outputs))?;
            Some(Arc::new(g))
        }
    };
    Ok(ExportParts { head, fp32_tail, inputs: m.model.inputs.clone(), outputs: m.model.outputs.clone() })
}

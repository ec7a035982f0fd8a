//! `cleave run`: the device side of collaborative inference.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cleave_codec::{Codec, EncodeOptions};
use cleave_cost::Link;
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::ModelGraph;
use cleave_node::adaptive::{self, AdaptiveConfig, AdaptiveDevice, AdaptiveRecord, Hedge, Strategy};
use cleave_node::{
    ClientSecurity, ClientTls, Device, DeviceConfig, EdgeClient, Endpoints, ExitPolicy, FailoverConfig, FrameStatus,
    RunSummary,
};
use cleave_plan::{Conditions, Constraints, Problem, ProblemBuilder, plan};
use serde_json::json;

use crate::model_arg::ModelArgs;
use crate::npy;
use crate::output::{human_bytes, table};

/// Run a model across this device and an edge server: the head here, the tail there.
///
/// Each frame runs the head up to the cut, encodes the tensors crossing it with the codec,
/// sends them to the server (`cleave serve`) over the Open Inference Protocol, and takes the
/// tail's answer. Frames are pipelined on one connection: the next frame's head computes while
/// the previous frame is on the network. If a request fails, the device computes the tail itself
/// and says so. `--cut auto` measures the link (RTT and an upload probe) and asks the planner.
///
/// `--cut adaptive` re-plans cut × codec for every frame from live estimates instead: the uplink
/// (harmonic mean of the last 5 transfers' throughputs, from the frames themselves and from
/// probes while the device computes alone), the RTT (health calls) and the server's queue. Every
/// candidate head is compiled and every tail warmed on the server before the first frame, so a
/// switch costs nothing. Frames go one at a time, released at `--fps` (default: back to back); a
/// frame's latency runs from its release. Each frame prints a line (cut, codec, latency, the
/// estimate it was planned with); `--records PATH` writes one JSON object per frame to PATH
/// (JSON lines, flushed per frame, so `tail -f` follows it live). `--device-slowdown X` makes
/// this device X times slower (it sleeps (X − 1) × each measured compute, and plans with its
/// profile scaled by X).
///
/// Failover: give several servers, `--edge A --edge B`, in order of preference. The device probes
/// each (ServerReady every `--probe-interval`, which must answer within `--probe-timeout`) and
/// watches every request's outcome. When the server in use fails, the request in flight is
/// re-sent, same id and same head output, to the next healthy one; the server de-duplicates by
/// id, so nothing is computed twice. Frames return to the first server when it recovers. When
/// none is healthy, or none answers before the frame's `--timeout`, the device computes the tail
/// itself and marks the frame degraded (LOCAL).
///
/// Early exits: with `--exit NAME --exit-threshold T` the head runs up to the exit and the
/// device answers there, sending nothing, when the exit's confidence (largest softmax
/// probability) reaches T. With `--cut auto --calibration calib.json` (from `cleave calibrate`)
/// the planner picks the exit, its threshold and the codec too, keeping the measured accuracy
/// loss within `--max-accuracy-drop`.
///
/// Examples:
///   cleave serve --model tiny=models/tiny_resnet.onnx &
///   cleave run models/tiny_resnet.onnx --model-name tiny --edge 127.0.0.1:8001 --cut 5 --codec int8
///   cleave run model.onnx --edge edge:8001 --cut auto --frames 100 --json
///   cleave run digits.onnx --edge edge:8001 --cut auto --calibration calib.json --max-accuracy-drop 0.5%
///   cleave run models/tiny_resnet.onnx --model-name tiny --edge 127.0.0.1:8001 --cut adaptive \
///       --fps 10 --frames 300 --device-slowdown 4 --records frames.jsonl
///   cleave run model.onnx --edge edge-a:8001 --edge edge-b:8001 --cut 5 --fps 30 --timeout 300ms
///   cleave run model.onnx --edge edge:8001 --tls-ca ca.pem --tls-cert device.pem \
///       --tls-key device.key --auth-token-file token.txt
///   cleave export model.onnx --cuts 7 --dtypes fp32,uint8 --format mlserver -o repo
///   cleave run model.onnx --edge mlserver:8081 --edge-kind oip --export repo --cut 7 --codec int8
///   cleave run --edge mlserver:8081 --edge-kind oip --export repo --cut 7 --codec int8
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// A server, HOST:PORT. Repeat it for failover, in order of preference.
    #[arg(long, required = true)]
    pub edge: Vec<String>,

    /// What the servers are: `cleave` (`cleave serve`: every cut and codec of one model) or
    /// `oip`, any Open Inference Protocol server (Triton, KServe, MLServer) serving the tails
    /// `cleave export` wrote. With `oip` the device names the exported tail model
    /// (`<model>_tail_c<N>`, `…_fp16`, `…_uint8`, or as --export's manifest says) and sends
    /// standard datatypes only: --codec fp32, fp16 or int8 (UINT8 plus its scale and zero
    /// point as two more inputs); int4 and int2 are cleave-to-cleave codecs. It needs a fixed
    /// --cut.
    #[arg(long, value_enum, default_value = "cleave")]
    pub edge_kind: EdgeKind,

    /// With --edge-kind oip: the directory `cleave export` wrote; its manifest.json names the
    /// tail model of --cut and --codec and lists its inputs. Without MODEL the export alone
    /// configures the device: it runs head_c<N>.onnx, and, when no server answers in time, the
    /// export's fp32 tail at --cut (an export without fp32 still offloads, but such a frame
    /// then fails). Each file is checked against the manifest: sha256, names, shapes.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,

    /// How often each healthy server's health is probed (ServerReady), with several --edge.
    /// 0 turns it off; with one --edge it is off: then only a failed request marks a server
    /// down (a down one is still re-probed until it recovers).
    #[arg(long, default_value = "50ms", value_parser = crate::cmd::duration)]
    pub probe_interval: Duration,

    /// A health probe slower than this marks the server down. On a slow uplink a probe can
    /// queue behind a frame's upload: raise it (or turn probing off) there.
    #[arg(long, default_value = "100ms", value_parser = crate::cmd::duration)]
    pub probe_timeout: Duration,

    /// Talk TLS to the server and trust certificates signed by this CA (PEM). Without it the
    /// connection is plaintext.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// With --tls-ca: present this certificate (PEM) to a server that requires client
    /// certificates (needs --tls-key).
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With --tls-ca: verify the server's certificate for this name instead of --edge's host.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_domain: Option<String>,

    /// Send `authorization: Bearer <token>` with every call; the token is this file's contents,
    /// surrounding whitespace dropped (default: the CLEAVE_AUTH_TOKEN environment variable).
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// The model's name on the server (default: the file's stem).
    #[arg(long)]
    pub model_name: Option<String>,

    /// Cut index (see `cleave inspect`); `auto`: the planner chooses once from the measured
    /// link; `adaptive`: the planner chooses again for every frame from live estimates.
    #[arg(long, default_value = "auto")]
    pub cut: String,

    /// Codec for the tensors crossing the cut: fp32, fp16, bf16, int8, int4, int2 (with --cut
    /// auto or adaptive: the only codec the planner may choose).
    #[arg(long)]
    pub codec: Option<Codec>,

    /// With --cut auto or adaptive: the codecs the planner weighs, comma-separated (default:
    /// fp32,fp16,int8; with --calibration also int4,int2).
    #[arg(long, value_delimiter = ',', conflicts_with = "codec")]
    pub codecs: Option<Vec<Codec>>,

    /// With --cut adaptive: the cuts it may choose, comma-separated (default: cut 0, every
    /// single-tensor bottleneck cut and the last; the last, device-only, is always allowed).
    #[arg(long, value_delimiter = ',')]
    pub cuts: Option<Vec<usize>>,

    /// Release frames at this rate, per second (default: back to back).
    #[arg(long, value_name = "F")]
    pub fps: Option<f64>,

    /// With --cut adaptive: this device is X times slower than this machine (≥ 1). It sleeps
    /// (X − 1) × each measured compute and plans with its profile scaled by X.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub device_slowdown: f64,

    /// With --cut adaptive: when the device computes the tail itself while a request is out;
    /// the frame takes whichever answer comes first, and the tail runs on a lowest-priority
    /// thread. `eager`: as the request is sent, so a link that stalls costs a frame about its
    /// local latency (it waits while a request short enough to cross within a tenth of its time
    /// is being acknowledged, and once a request is delivered it pauses while the answer is
    /// due; otherwise a sent frame costs device CPU); `race`: once the answer is due (the plan's
    /// predicted remote time), or earlier when the device's socket shows the upload stalled
    /// (bytes queued, none acknowledged for 100 ms or more), which spends less device energy;
    /// `race-due`: as `race` without watching the socket; `late`: once the answer is late by
    /// twice the predicted remote time + 20 ms, not counted on; `off`: wait for the server
    /// until --timeout.
    #[arg(long, value_name = "POLICY", default_value = "eager")]
    pub hedge: Hedge,

    /// With --cut adaptive: join the fleet of an edge started with `cleave serve --coordinate`.
    /// The device identifies itself, reports its options (cut, codec, expected latency and
    /// server time) when they change, and follows the edge's joint plan unless its own
    /// estimates say the recommended offload is slower than computing locally. Without it the
    /// device still plans with the edge's reported load (`cleave.server_util`).
    #[arg(long)]
    pub fleet: bool,

    /// With --cut adaptive: write one JSON object per frame to PATH (JSON lines, flushed per
    /// frame): the decision's estimate, cut, codec, timings, bytes, and `start_unix_ms`, the
    /// wall-clock time of the decision.
    #[arg(long, value_name = "PATH")]
    pub records: Option<PathBuf>,

    /// Quantize per channel instead of per tensor.
    #[arg(long)]
    pub per_channel: bool,

    /// Compress the encoded tensors with LZ4.
    #[arg(long)]
    pub lz4: bool,

    /// Input as .npy (`PATH` or `NAME=PATH`), used for every frame.
    #[arg(long = "input", value_name = "[NAME=]PATH")]
    pub inputs: Vec<String>,

    /// Number of frames (random inputs, seeds 0.., unless --input).
    #[arg(long, default_value_t = 10)]
    pub frames: usize,

    /// Frames on the network at once (not with --cut adaptive: its frames go one at a time).
    #[arg(long, default_value_t = 2)]
    pub max_in_flight: usize,

    /// Deadline of each frame, from its release: a frame no server has answered in time is
    /// completed by the device itself, before the deadline (it keeps its own tail's time in
    /// reserve). Default: with --cut auto, 3× the plan's predicted latency + 100 ms; else 5 s.
    #[arg(long, value_parser = crate::cmd::duration)]
    pub timeout: Option<Duration>,

    /// Threads per inference on this device.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// With --cut auto or adaptive: how many times faster than this device the server is.
    #[arg(long, default_value_t = 1.0)]
    pub server_speedup: f64,

    /// With --cut auto or adaptive: the server's profile (`cleave profile -o` on the server).
    #[arg(long, value_name = "PATH")]
    pub server_profile: Option<PathBuf>,

    /// With --cut auto or adaptive: this device's profile (default: profile now).
    #[arg(long, value_name = "PATH")]
    pub device_profile: Option<PathBuf>,

    /// Answer at this early-exit output when it is confident (needs --exit-threshold).
    #[arg(long, value_name = "NAME", requires = "exit_threshold")]
    pub exit: Option<String>,

    /// Confidence (largest softmax probability, 0..1) at which --exit answers.
    #[arg(long, value_name = "T", requires = "exit")]
    pub exit_threshold: Option<f64>,

    /// With --cut auto or adaptive: measured accuracy costs (`cleave calibrate -o`), so the
    /// planner may use exits and 4/2-bit codecs within --max-accuracy-drop.
    #[arg(long, value_name = "PATH")]
    pub calibration: Option<PathBuf>,

    /// With --cut auto or adaptive: the largest accuracy loss allowed, e.g. 0.5% (without
    /// --calibration, only codecs of 8 bits or more and no exits).
    #[arg(long, value_parser = crate::cmd::plan::fraction)]
    pub max_accuracy_drop: Option<f64>,

    /// Also run local references and report differences per frame.
    #[arg(long)]
    pub check: bool,

    /// Write the last frame's outputs as .npy (a file, or a directory for several outputs).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Print JSON (frames and summary) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// TLS and the bearer token for the connection to the server, from the flags.
pub(crate) fn security(args: &Args) -> Result<ClientSecurity> {
    let tls = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            Some(ClientTls::load(ca, identity, args.tls_domain.as_deref())?)
        }
        None => None,
    };
    Ok(ClientSecurity { tls, token: crate::cmd::auth_token(args.auth_token_file.as_deref())? })
}

/// The kind of server behind `--edge`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// `cleave serve`.
    Cleave,
    /// Any Open Inference Protocol server serving `cleave export`'s tails.
    Oip,
}

pub fn run(args: Args) -> Result<()> {
    if args.edge_kind == EdgeKind::Oip {
        return crate::cmd::run_oip::run(args);
    }
    if args.export.is_some() {
        bail!("--export applies to --edge-kind oip");
    }
    let adaptive = args.cut == "adaptive";
    check_mode_flags(&args, adaptive)?;
    let loaded = args.model.load()?;
    let graph = Arc::new(loaded.graph);
    let model_name = args.model_name.clone().unwrap_or_else(|| match &args.model.model {
        Some(p) => p.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned(),
        None => "tiny_resnet".to_owned(),
    });
    let frames = frames(&args, &graph)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let security = security(&args)?;
    if adaptive {
        return rt.block_on(run_adaptive(args, graph, model_name, frames, security));
    }
    let engine = Arc::new(Engine::new(EngineConfig { threads: args.threads, cache_capacity: 8 }));
    rt.block_on(async move {
        let endpoints = Arc::new(connect(&args, &security, &model_name).await?);
        let (_, mut client) = endpoints.current().context("no server is healthy")?;
        let (cut, codec, exit, why, predicted_ms) = choose(&args, &graph, &mut client, &model_name).await?;
        // The frame deadline: given, or derived from the plan (3× its prediction + 100 ms, so a
        // server that stalls is given up on in time for the device to answer), or 5 s.
        let timeout = args.timeout.unwrap_or_else(|| match predicted_ms {
            Some(ms) if ms.is_finite() => Duration::from_secs_f64((3.0 * ms + 100.0) / 1e3),
            _ => Duration::from_secs(5),
        });
        if !args.json {
            eprintln!(
                "frame deadline {timeout:?}{}",
                if args.timeout.is_none() && predicted_ms.is_some() { " (3× the plan's prediction + 100 ms)" } else { "" }
            );
        }
        if !args.json {
            eprintln!("{why}");
        }
        let config = DeviceConfig {
            model_name: model_name.clone(),
            cut,
            encode: EncodeOptions { codec, per_channel: args.per_channel, lz4: args.lz4 },
            max_in_flight: args.max_in_flight,
            timeout: Some(timeout),
            fps: args.fps,
            check: args.check,
        };
        let device = Device::with_endpoints(engine, graph.clone(), Some(endpoints), config)
            .and_then(|d| d.with_exit(exit.clone()))
            .map_err(anyhow::Error::msg)?;
        let device = Arc::new(device);
        let t0 = Instant::now();
        let results = device.run(frames).await;
        let summary = RunSummary::of(&results, t0.elapsed());
        if let (Some(path), Some(last)) = (&args.output, results.last()) {
            npy::write_outputs(path, &last.outputs)?;
        }
        if args.json {
            let v = json!({
                "model": model_name,
                "edge": args.edge,
                "cut": cut,
                "codec": codec,
                "exit": exit.as_ref().map(|e| json!({"name": e.name, "threshold": e.threshold})),
                "decision": why,
                "deadline_ms": timeout.as_secs_f64() * 1e3,
                "summary": summary,
                "frames": results.iter().map(|f| &f.record).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let mut t = table(
            &["frame", "status", "sent", "head ms", "rpc ms", "queue ms", "server ms", "total ms", "check"],
            &[0, 2, 3, 4, 5, 6, 7],
        );
        for f in &results {
            let r = &f.record;
            t.add_row(vec![
                r.frame.to_string(),
                match r.status {
                    FrameStatus::Remote => "remote".into(),
                    FrameStatus::Device => "device".into(),
                    FrameStatus::EarlyExit => format!("exit ({:.3})", r.exit_confidence.unwrap_or(0.0)),
                    FrameStatus::LocalFallback => format!("LOCAL ({})", r.error.as_deref().unwrap_or("?")),
                },
                human_bytes(r.bytes_up),
                format!("{:.2}", r.head_ms),
                format!("{:.2}", r.rpc_ms),
                r.queue_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                r.compute_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                format!("{:.2}", r.total_ms),
                r.check
                    .as_ref()
                    .map(|c| format!("tail {:.1e}, whole {:.1e}, codec {:.2}× bound", c.vs_local_tail, c.vs_whole, c.boundary_error_vs_bound))
                    .unwrap_or_default(),
            ]);
        }
        println!("{t}");
        println!(
            "{} frames: {} remote, {} early exit, {} local fallback, {} device-only; latency p50 {:.2} ms, p95 {:.2} ms; {:.1} frames/s; sent {}",
            summary.frames,
            summary.remote,
            summary.early_exit,
            summary.local_fallback,
            summary.device_only,
            summary.p50_ms,
            summary.p95_ms,
            summary.fps,
            human_bytes(summary.bytes_up)
        );
        Ok(())
    })
}

/// Connects to every `--edge` (the unreachable ones start down and are probed) and checks that
/// each reachable one serves the model.
pub(crate) async fn connect(args: &Args, security: &ClientSecurity, model_name: &str) -> Result<Endpoints> {
    connect_some(args, security, model_name, true).await
}

/// As [`connect`], but with `need_one` false none reachable is no error: every server starts
/// down and is probed (for a device that answers locally meanwhile).
pub(crate) async fn connect_some(
    args: &Args,
    security: &ClientSecurity,
    model_name: &str,
    need_one: bool,
) -> Result<Endpoints> {
    let config = FailoverConfig {
        // With one server there is nowhere to fail over to: its health comes from the requests
        // alone, and a slow probe on a loaded machine cannot send frames home for nothing.
        probe_healthy: !args.probe_interval.is_zero() && args.edge.len() > 1,
        probe_interval: args.probe_interval,
        probe_timeout: args.probe_timeout,
        ..FailoverConfig::default()
    };
    let connected = if need_one {
        Endpoints::connect(&args.edge, 64 << 20, security, config, Duration::from_secs(5)).await
    } else {
        Endpoints::connect_or_start_down(&args.edge, 64 << 20, security, config, Duration::from_secs(5)).await
    };
    let endpoints = connected.with_context(|| format!("--edge {}", args.edge.join(", ")))?;
    for i in 0..endpoints.len() {
        if !endpoints.is_up(i) {
            continue;
        }
        let addr = endpoints.addr(i).to_owned();
        let mut c =
            EdgeClient::connect_with(&addr, 64 << 20, security).await.with_context(|| format!("--edge {addr}"))?;
        if !c.model_ready(model_name).await.with_context(|| format!("asking {addr} about model `{model_name}`"))? {
            bail!("the server at {addr} does not serve model `{model_name}` (set --model-name)");
        }
    }
    Ok(endpoints)
}

/// The frames' inputs.
pub(crate) fn frames(args: &Args, graph: &cleave_graph::ModelGraph) -> Result<Vec<TensorMap>> {
    frames_for(args, &graph.inputs())
}

/// The frames to run: --input files, or --frames random inputs for `specs`.
pub(crate) fn frames_for(args: &Args, specs: &[cleave_graph::TensorSpec]) -> Result<Vec<TensorMap>> {
    if args.inputs.is_empty() {
        return Ok((0..args.frames.max(1))
            .map(|k| specs.iter().map(|s| (s.name.clone(), random_input(s, k as u64))).collect())
            .collect());
    }
    let mut inputs = TensorMap::new();
    for arg in &args.inputs {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
            None if specs.len() == 1 => (specs[0].name.clone(), PathBuf::from(arg)),
            None => bail!("this model has several inputs: name each one, --input NAME=PATH"),
        };
        let spec =
            specs.iter().find(|s| s.name == name).with_context(|| format!("`{name}` is not an input of this model"))?;
        let t = npy::read(&path)?;
        cleave_engine::check_input(spec, &t).with_context(|| format!("input file {}", path.display()))?;
        inputs.insert(name, Arc::new(t));
    }
    Ok(vec![inputs; args.frames.max(1)])
}

/// The cut, codec and exit policy: given, or planned from the measured link.
async fn choose(
    args: &Args,
    graph: &cleave_graph::ModelGraph,
    client: &mut EdgeClient,
    model: &str,
) -> Result<(usize, Codec, Option<ExitPolicy>, String, Option<f64>)> {
    let given_exit = match (&args.exit, args.exit_threshold) {
        (Some(name), Some(threshold)) => Some(ExitPolicy { name: name.clone(), threshold }),
        _ => None,
    };
    if args.cut != "auto" {
        let cut: usize = args
            .cut
            .parse()
            .with_context(|| format!("--cut `{}` is not a cut index, `auto` or `adaptive`", args.cut))?;
        graph.check_cut(cut)?;
        if args.calibration.is_some() || args.max_accuracy_drop.is_some() || args.codecs.is_some() {
            bail!(
                "--calibration, --max-accuracy-drop and --codecs guide --cut auto; with a fixed --cut, choose --codec and --exit yourself"
            );
        }
        let codec = args.codec.unwrap_or(Codec::Fp32);
        let boundary = graph.cut(cut)?.tensors;
        if cut < graph.last_cut() && !codec.applies_to_boundary(boundary.iter().map(|t| (t.dtype, t.shape.as_slice())))
        {
            let shapes: Vec<String> = boundary.iter().map(|t| format!("{} {:?}", t.name, t.shape)).collect();
            bail!(
                "--codec {codec} cannot carry cut {cut} ({}): JPEG takes image tensors (NCHW, 1 or 3 channels), in practice cut 0",
                shapes.join(", ")
            );
        }
        return Ok((cut, codec, given_exit, format!("cut {cut}, codec {codec} (as given)"), None));
    }
    // Measure: RTT from health calls, uplink from a probe the server answers without computing.
    let rtt = client.rtt(5).await?;
    let probe_bytes = 256 * 1024;
    let t = client.probe(model, probe_bytes).await?;
    let transfer = t.saturating_sub(rtt).max(Duration::from_micros(50));
    let up_bps = probe_bytes as f64 * 8.0 / transfer.as_secs_f64();
    let problem = problem(args, graph)?;
    let link = Link::symmetric(up_bps, rtt.as_secs_f64() * 1e3);
    let best = plan(&problem, &Conditions::two_tier(link))?;
    let codec = best.codecs.first().copied().unwrap_or(problem.codecs[0]);
    let planned_exit = match (&best.exit, best.exit_threshold) {
        (Some(name), Some(threshold)) => Some(ExitPolicy { name: name.clone(), threshold }),
        _ => None,
    };
    let exit = given_exit.or(planned_exit);
    let why = format!(
        "measured RTT {:.2} ms and uplink {:.1} Mbit/s; the planner chose cut {} with {codec}{} (predicted {:.2} ms, accuracy drop {:.2}%)",
        rtt.as_secs_f64() * 1e3,
        up_bps / 1e6,
        best.cuts[0],
        exit.as_ref().map(|e| format!(", exit {} at confidence ≥ {}", e.name, e.threshold)).unwrap_or_default(),
        best.predicted.total_ms,
        best.predicted.accuracy_drop * 100.0,
    );
    Ok((best.cuts[0], codec, exit, why, Some(best.predicted.total_ms)))
}

/// Refuses flags that do not apply to the chosen `--cut` mode, rather than ignoring them.
fn check_mode_flags(args: &Args, adaptive: bool) -> Result<()> {
    if adaptive {
        let unsupported = [
            (args.check, "--check"),
            (args.exit.is_some(), "--exit (the planner picks exits from --calibration)"),
            (args.per_channel, "--per-channel"),
            (args.lz4, "--lz4"),
        ];
        if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
            bail!("{flag} is not supported with --cut adaptive");
        }
        if let Some(fps) = args.fps
            && !(fps.is_finite() && fps > 0.0)
        {
            bail!("--fps {fps} must be a positive number");
        }
        if !(args.device_slowdown.is_finite() && args.device_slowdown >= 1.0) {
            bail!("--device-slowdown {} must be a finite number ≥ 1", args.device_slowdown);
        }
        return Ok(());
    }
    if let Some(fps) = args.fps
        && !(fps.is_finite() && fps > 0.0)
    {
        bail!("--fps {fps} must be a positive number");
    }
    let adaptive_only = [
        (args.device_slowdown != 1.0, "--device-slowdown"),
        (args.records.is_some(), "--records"),
        (args.cuts.is_some(), "--cuts"),
        (args.fleet, "--fleet"),
    ];
    if let Some((_, flag)) = adaptive_only.iter().find(|(set, _)| *set) {
        bail!("{flag} applies to --cut adaptive only");
    }
    Ok(())
}

/// The planning problem of `--cut auto` and `--cut adaptive`: this device's profile (given or
/// measured now) scaled by `--device-slowdown`, the server's (given, or this machine's divided by
/// `--server-speedup`), the codecs, the calibration and the accuracy budget.
fn problem(args: &Args, graph: &cleave_graph::ModelGraph) -> Result<Problem> {
    let calibration = args.calibration.as_deref().map(|p| crate::cmd::plan::read_calibration(p, graph)).transpose()?;
    if !(args.server_speedup.is_finite() && args.server_speedup > 0.0) {
        bail!("--server-speedup {} must be a positive number", args.server_speedup);
    }
    let here = match &args.device_profile {
        Some(p) => crate::cmd::profile::read_profile(p, graph)?,
        None => crate::cmd::profile::measure(graph, args.threads, 1, 5, None, !args.json)?,
    };
    let server = match &args.server_profile {
        Some(p) => crate::cmd::profile::read_profile(p, graph)?,
        None => here.scaled(1.0 / args.server_speedup, "server"),
    };
    let device = if args.device_slowdown == 1.0 { here } else { here.scaled(args.device_slowdown, "device") };
    let codecs = match (&args.codecs, args.codec) {
        (Some(list), _) if list.is_empty() => bail!("--codecs: give at least one codec"),
        (Some(list), _) => list.clone(),
        (None, Some(c)) => vec![c],
        (None, None) if calibration.is_some() => Codec::FEATURE.to_vec(),
        (None, None) => Codec::UNCALIBRATED_DEFAULT.to_vec(),
    };
    let constraints = Constraints { max_accuracy_drop: args.max_accuracy_drop, ..Default::default() };
    Ok(ProblemBuilder::new(graph, &device)
        .server(server)
        .codecs(codecs)
        .calibration(calibration.as_ref())
        .constraints(constraints)
        .build())
}

/// One line of `--records`: the frame's record and the wall-clock time of its decision.
#[derive(serde::Serialize)]
struct RecordLine<'a> {
    #[serde(flatten)]
    record: &'a AdaptiveRecord,
    /// Milliseconds since the Unix epoch when the device started on the frame (decided).
    start_unix_ms: f64,
}

/// `--cut adaptive`: one [`AdaptiveDevice`] re-planning every frame.
async fn run_adaptive(
    args: Args,
    graph: Arc<ModelGraph>,
    model_name: String,
    frames: Vec<TensorMap>,
    security: ClientSecurity,
) -> Result<()> {
    let endpoints = Arc::new(connect(&args, &security, &model_name).await?);
    let (_, client) = endpoints.current().context("no server is healthy")?;
    let mut problem = problem(&args, &graph)?;
    let candidates: BTreeSet<usize> = match &args.cuts {
        Some(list) => {
            for &c in list {
                graph.check_cut(c).context("--cuts")?;
            }
            list.iter().copied().collect()
        }
        None => adaptive::default_candidate_cuts(&graph),
    };
    adaptive::restrict_cuts(&mut problem, &candidates);
    let codecs = problem.codecs.clone();
    let config = AdaptiveConfig {
        model_name: model_name.clone(),
        timeout: args.timeout.unwrap_or(Duration::from_secs(5)),
        device_slowdown: args.device_slowdown,
        down_bps: None,
        probe: true,
        hedge: args.hedge,
        fleet: args.fleet,
    };
    let engine =
        Arc::new(Engine::new(EngineConfig { threads: args.threads, cache_capacity: 4 * candidates.len() + 16 }));
    let epoch = Instant::now();
    let epoch_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0);
    let mut device =
        AdaptiveDevice::with_endpoints(engine, graph.clone(), Some(endpoints), problem, Strategy::Adaptive, config)?
            .with_epoch(epoch);
    let cuts = device.candidate_cuts();
    if !args.json {
        eprintln!(
            "adaptive: cuts {} × codecs {}, device slowdown {}; compiling heads and warming the server's tails",
            cuts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
            codecs.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
            args.device_slowdown
        );
    }
    // A profile measured here: its scale from the whole model as a frame runs it (see "Compute as
    // measured" in `cleave_node::adaptive`). A profile from a file describes its own device.
    let measured_here = args.device_profile.is_none();
    let (mut device, fit) = tokio::task::spawn_blocking(move || {
        device.prepare()?;
        let fit = if measured_here { Some(device.fit_device_to_measured()?) } else { None };
        Ok::<_, adaptive::AdaptiveError>((device, fit))
    })
    .await??;
    if let (Some((before, after)), false) = (fit, args.json) {
        eprintln!("device: whole model {after:.1} ms as timed now (the profile said {before:.1})");
    }
    device.warm_server(&client).await?;
    device.bootstrap().await;
    let mut records_out = match &args.records {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    if !args.json {
        let e = device.estimates().estimate();
        eprintln!(
            "bootstrap: uplink {:.2} Mbit/s{}, RTT {:.2} ms",
            e.up_bps / 1e6,
            if e.measured { "" } else { " (default, not measured)" },
            e.rtt_ms
        );
    }
    let first = Instant::now();
    let mut records = Vec::with_capacity(frames.len());
    let mut last_outputs = TensorMap::new();
    for (k, inputs) in frames.into_iter().enumerate() {
        let release = match args.fps {
            Some(fps) => first + Duration::from_secs_f64(k as f64 / fps),
            None => Instant::now(),
        };
        tokio::time::sleep_until(release.into()).await;
        let (rec, outputs) = device.frame(k, inputs, release).await;
        if let Some(w) = records_out.as_mut() {
            let line = RecordLine { record: &rec, start_unix_ms: epoch_unix_ms + rec.start_ms };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
            w.flush().context("--records")?;
        }
        if !args.json {
            println!("{}", frame_line(&rec));
        }
        last_outputs = outputs;
        records.push(rec);
    }
    let summary = RunSummary::of_adaptive(&records, first.elapsed());
    if let Some(path) = &args.output {
        npy::write_outputs(path, &last_outputs)?;
    }
    if args.json {
        let v = json!({
            "model": model_name,
            "edge": args.edge,
            "cut": "adaptive",
            "candidate_cuts": cuts,
            "codecs": codecs,
            "device_slowdown": args.device_slowdown,
            "summary": summary,
            "frames": records,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let cut_counts = records.iter().fold(BTreeMap::<usize, usize>::new(), |mut m, r| {
        *m.entry(r.cut).or_default() += 1;
        m
    });
    println!(
        "{} frames: {} remote, {} early exit, {} local fallback, {} device-only; latency p50 {:.2} ms, p95 {:.2} ms; {:.1} frames/s; sent {}; cuts used {}",
        summary.frames,
        summary.remote,
        summary.early_exit,
        summary.local_fallback,
        summary.device_only,
        summary.p50_ms,
        summary.p95_ms,
        summary.fps,
        human_bytes(summary.bytes_up),
        cut_counts.iter().map(|(c, n)| format!("{c} ×{n}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// One adaptive frame, for people: cut, codec, where it was answered, latency, bytes and the
/// estimate the decision used.
fn frame_line(r: &AdaptiveRecord) -> String {
    let status = match r.status {
        FrameStatus::Remote => "remote".to_owned(),
        FrameStatus::Device => "device".to_owned(),
        FrameStatus::EarlyExit => format!("exit {}", r.exit.as_deref().unwrap_or("?")),
        FrameStatus::LocalFallback => format!("LOCAL ({})", r.error.as_deref().unwrap_or("?")),
    };
    let fleet = match (&r.fleet_plan, r.followed) {
        (Some(p), Some(true)) => format!("  fleet plan {p}"),
        (Some(p), _) => format!("  fleet plan {p} (not followed: slower than local now)"),
        _ => String::new(),
    };
    format!(
        "frame {:>4}  cut {:>3} {:<5} {:<8} {:>9.2} ms  sent {:>9}  estimate {:>7.2} Mbit/s{}{fleet}",
        r.frame,
        r.cut,
        r.codec.map(|c| c.name()).unwrap_or("-"),
        status,
        r.total_ms,
        human_bytes(r.bytes_up),
        r.estimate.up_bps / 1e6,
        if r.estimate.measured { "" } else { " (default)" },
    )
}

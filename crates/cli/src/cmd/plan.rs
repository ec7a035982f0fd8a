//! `cleave plan`: where to cut, with which codec and exit policy, for a given link and machines.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cleave_codec::Codec;
use cleave_cost::{Calibration, EnergyModel, Link, Profile, parse_bandwidth, parse_bytes, parse_duration_ms};
use cleave_graph::ModelGraph;
use cleave_plan::{Conditions, Constraints, Objective, Plan, Problem, ProblemBuilder, alternatives, plan};
use serde_json::json;

use crate::cmd::profile::{measure, read_profile};
use crate::model_arg::ModelArgs;
use crate::output::{human_bytes, table};
use crate::plot::{StackedPanel, stacked_bars};

/// Choose where to cut, which feature codec, and which early-exit policy, for a link and a pair
/// (or trio) of machines, and show the alternatives.
///
/// The planner searches every cut × codec × exit policy exactly and minimises the predicted
/// end-to-end latency (or device energy, or a weighted sum): device compute + RTT + uplink +
/// server queue + server compute + downlink. Compute comes from measured profiles
/// (`cleave profile -o device.json`); without `--device-profile` this machine is profiled now.
/// Without `--server-profile`, the server is the device profile divided by `--server-speedup`.
///
/// Codecs: fp32, fp16, int8 by default; with `--calibration` (from `cleave calibrate`) also int4
/// and int2, each with its measured accuracy cost, checked against `--max-accuracy-drop`.
///
/// Three tiers (device → edge → cloud): give `--cloud-uplink` and `--cloud-profile` or
/// `--cloud-speedup`; the plan then has two cuts.
///
/// Examples:
///   cleave plan model.onnx --uplink 5mbit --rtt 40ms --server-speedup 10
///   cleave plan model.onnx --uplink 1gbit --server-profile edge.json --json
///   cleave plan model.onnx --uplink 2mbit --privacy --memory-cap 8MiB --plot plan.png
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Uplink bandwidth, device → server (e.g. 5mbit, 800kbit, 1gbit).
    #[arg(long, value_parser = bandwidth)]
    pub uplink: f64,

    /// Downlink bandwidth (default: the uplink's).
    #[arg(long, value_parser = bandwidth)]
    pub downlink: Option<f64>,

    /// Round-trip time between device and server.
    #[arg(long, default_value = "40ms", value_parser = duration)]
    pub rtt: f64,

    /// Fixed bytes added to every message (protocol framing).
    #[arg(long, default_value_t = cleave_cost::link::DEFAULT_MESSAGE_OVERHEAD)]
    pub overhead_bytes: u64,

    /// Device profile from `cleave profile -o` (default: profile this machine now).
    #[arg(long, value_name = "PATH")]
    pub device_profile: Option<PathBuf>,

    /// Server profile from `cleave profile -o` on the server.
    #[arg(long, value_name = "PATH")]
    pub server_profile: Option<PathBuf>,

    /// Without --server-profile: how many times faster than the device the server is.
    #[arg(long, default_value_t = 1.0)]
    pub server_speedup: f64,

    /// Time requests currently wait in the server's queue.
    #[arg(long, default_value = "0ms", value_parser = duration)]
    pub server_queue: f64,

    /// Three tiers: edge → cloud bandwidth.
    #[arg(long, value_parser = bandwidth)]
    pub cloud_uplink: Option<f64>,

    /// Three tiers: edge ↔ cloud round-trip time.
    #[arg(long, default_value = "20ms", value_parser = duration)]
    pub cloud_rtt: f64,

    /// Three tiers: cloud profile.
    #[arg(long, value_name = "PATH")]
    pub cloud_profile: Option<PathBuf>,

    /// Three tiers, without --cloud-profile: how many times faster than the device the cloud is.
    #[arg(long)]
    pub cloud_speedup: Option<f64>,

    /// Three tiers: time requests wait in the cloud's queue.
    #[arg(long, default_value = "0ms", value_parser = duration)]
    pub cloud_queue: f64,

    /// What to minimise: latency, energy (device joules), or weighted:W (W·ms + (1−W)·mJ).
    #[arg(long, default_value = "latency", value_parser = objective)]
    pub objective: Objective,

    /// Largest accuracy loss allowed, e.g. 1% (needs --calibration to allow int4/int2).
    #[arg(long, value_parser = fraction)]
    pub max_accuracy_drop: Option<f64>,

    /// Never send the raw input: the first cut is at least 1.
    #[arg(long)]
    pub privacy: bool,

    /// Smallest allowed first cut (keeps at least this many cuts' worth of layers on the device).
    #[arg(long)]
    pub min_cut: Option<usize>,

    /// Largest head weight footprint the device can hold (e.g. 8MiB).
    #[arg(long, value_parser = bytes)]
    pub memory_cap: Option<u64>,

    /// Codecs to consider (comma-separated): fp32, fp16, bf16, int8, int4, int2.
    #[arg(long, value_delimiter = ',')]
    pub codecs: Option<Vec<Codec>>,

    /// Accuracy costs from `cleave calibrate`.
    #[arg(long, value_name = "PATH")]
    pub calibration: Option<PathBuf>,

    /// Device compute power in watts, for the energy model (default 3 W).
    #[arg(long)]
    pub device_power: Option<f64>,

    /// How many alternatives to list.
    #[arg(long, default_value_t = 5)]
    pub top: usize,

    /// Threads, when profiling this machine now.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Timed rounds, when profiling this machine now.
    #[arg(long, default_value_t = 8)]
    pub profile_rounds: usize,

    /// Print the plan as JSON on stdout (fields `cuts`, `codecs`, `exit`, `predicted`, …, and
    /// `alternatives`).
    #[arg(long)]
    pub json: bool,

    /// Draw predicted latency per cut (device / transfer / server) at this link and at 1, 10 and
    /// 100 Mbit/s, to a .png or .svg file.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
}

fn bandwidth(s: &str) -> Result<f64, String> {
    parse_bandwidth(s).map_err(|e| e.to_string())
}
fn duration(s: &str) -> Result<f64, String> {
    parse_duration_ms(s).map_err(|e| e.to_string())
}
fn bytes(s: &str) -> Result<u64, String> {
    parse_bytes(s).map_err(|e| e.to_string())
}
/// Reads a calibration (`cleave calibrate -o`) and checks it was measured on `graph`.
pub(crate) fn read_calibration(path: &std::path::Path, graph: &ModelGraph) -> Result<Calibration> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read calibration {}", path.display()))?;
    let c = Calibration::from_json(&s).with_context(|| format!("calibration {}", path.display()))?;
    if c.model_sha256 != graph.sha256() {
        bail!(
            "calibration {} was measured on another model (sha256 {}…, this model is {}…)",
            path.display(),
            &c.model_sha256[..12.min(c.model_sha256.len())],
            &graph.sha256()[..12]
        );
    }
    Ok(c)
}

/// A percentage (`1%`) or a fraction (`0.01`) in 0..1.
pub(crate) fn fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("`{s}` is not a percentage (e.g. 1% or 0.01)"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` is outside 0%..100%"));
    }
    Ok(v)
}
fn objective(s: &str) -> Result<Objective, String> {
    match s.trim() {
        "latency" => Ok(Objective::Latency),
        "energy" => Ok(Objective::Energy),
        w if w.starts_with("weighted:") => {
            let v: f64 = w["weighted:".len()..].parse().map_err(|_| format!("`{s}`: weighted:W needs W in 0..1"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("`{s}`: W must be in 0..1"));
            }
            Ok(Objective::Weighted { latency_weight: v })
        }
        _ => Err(format!("`{s}` is not an objective (latency, energy, weighted:W)")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let graph = &loaded.graph;
    if args.server_speedup <= 0.0 || args.cloud_speedup.is_some_and(|s| s <= 0.0) {
        bail!("speedups must be positive");
    }
    let device = match &args.device_profile {
        Some(p) => read_profile(p, graph)?,
        None => {
            if !args.json {
                eprintln!(
                    "no --device-profile: profiling this machine now (save one with `cleave profile -o device.json`)"
                );
            }
            measure(graph, args.threads, 2, args.profile_rounds, None, !args.json)?
        }
    };
    let server = match &args.server_profile {
        Some(p) => read_profile(p, graph)?,
        None => device.scaled(1.0 / args.server_speedup, &format!("{} ÷ {}", device.device, args.server_speedup)),
    };
    let three_tier = args.cloud_uplink.is_some();
    let cloud: Option<Profile> = match (&args.cloud_profile, args.cloud_speedup) {
        (Some(p), _) => Some(read_profile(p, graph)?),
        (None, Some(s)) => Some(device.scaled(1.0 / s, &format!("{} ÷ {s}", device.device))),
        (None, None) if three_tier => bail!("three tiers need --cloud-profile or --cloud-speedup"),
        (None, None) => None,
    };
    if cloud.is_some() && !three_tier {
        bail!("a cloud tier needs --cloud-uplink (the edge → cloud bandwidth)");
    }
    let calibration = args.calibration.as_deref().map(|p| read_calibration(p, graph)).transpose()?;
    let codecs = match &args.codecs {
        Some(c) if c.is_empty() => bail!("--codecs needs at least one codec"),
        Some(c) => c.clone(),
        None if calibration.is_some() => Codec::FEATURE.to_vec(),
        None => Codec::UNCALIBRATED_DEFAULT.to_vec(),
    };
    let mut energy = EnergyModel::default();
    if let Some(w) = args.device_power {
        energy.compute_w = w;
    }
    let constraints = Constraints {
        max_accuracy_drop: args.max_accuracy_drop,
        min_cut: args.min_cut.unwrap_or(0).max(if args.privacy { 1 } else { 0 }),
        device_memory: args.memory_cap,
    };
    let problem = ProblemBuilder::new(graph, &device)
        .server(server.clone())
        .cloud(cloud.clone())
        .codecs(codecs)
        .calibration(calibration.as_ref())
        .constraints(constraints)
        .objective(args.objective)
        .energy(energy)
        .build();
    let link = Link {
        up_bps: args.uplink,
        down_bps: args.downlink.unwrap_or(args.uplink),
        rtt_ms: args.rtt,
        overhead_bytes: args.overhead_bytes,
    };
    let conditions = |link: Link| Conditions {
        link,
        server_queue_ms: args.server_queue,
        link2: args.cloud_uplink.map(|b| Link {
            up_bps: b,
            down_bps: b,
            rtt_ms: args.cloud_rtt,
            overhead_bytes: args.overhead_bytes,
        }),
        cloud_queue_ms: args.cloud_queue,
    };
    let cond = conditions(link);
    let best = plan(&problem, &cond)?;
    let alts = alternatives(&problem, &cond, args.top)?;

    if let Some(path) = &args.plot {
        let mut panels = vec![];
        for (label, bps) in [("this link", link.up_bps), ("1 Mbit/s", 1e6), ("10 Mbit/s", 1e7), ("100 Mbit/s", 1e8)] {
            let l = Link { up_bps: bps, down_bps: if label == "this link" { link.down_bps } else { bps }, ..link };
            let c = conditions(l);
            let per_cut = alternatives(&problem, &c, usize::MAX)?;
            let chosen = plan(&problem, &c)?;
            panels.push(StackedPanel {
                title: format!(
                    "{label}: uplink {}, RTT {} ms; best: {}",
                    rate(bps),
                    args.rtt,
                    describe(&chosen, problem.last())
                ),
                bars: per_cut.iter().map(|p| (p.cuts[0], breakdown(p))).collect(),
                chosen: Some(chosen.cuts[0]),
            });
        }
        stacked_bars(
            path,
            &format!("{}: predicted latency per cut (best codec and exit at each cut)", graph.name()),
            &panels,
        )?;
    }

    if args.json {
        let mut v = serde_json::to_value(&best)?;
        v["alternatives"] = serde_json::to_value(&alts)?;
        v["last_cut"] = json!(problem.last());
        v["conditions"] = serde_json::to_value(cond)?;
        v["objective_kind"] = serde_json::to_value(args.objective)?;
        v["device"] = json!(device.device);
        v["server"] = json!(server.device);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_plan(graph, &problem, &best, &device, &server, cloud.as_ref(), &link, &args);
    let mut t = table(
        &["rank", "cut", "codec", "exit", "total ms", "device", "transfer", "server", "sent", "energy J"],
        &[0, 1, 4, 5, 6, 7, 8, 9],
    );
    for (i, p) in alts.iter().enumerate() {
        let b = breakdown(p);
        t.add_row(vec![
            (i + 1).to_string(),
            p.cuts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("→"),
            if p.codecs.is_empty() {
                "-".into()
            } else {
                p.codecs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("→")
            },
            p.exit.clone().unwrap_or_else(|| "-".into()),
            format!("{:.2}", p.predicted.total_ms),
            format!("{:.2}", b[0]),
            format!("{:.2}", b[1]),
            format!("{:.2}", b[2]),
            human_bytes(p.predicted.bytes_up.round() as u64),
            format!("{:.3}", p.predicted.energy_j),
        ]);
    }
    println!("\nalternatives (best plan per first cut):\n{t}");
    if let Some(p) = &args.plot {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// (device, transfer, server) milliseconds of a frame that is sent.
fn breakdown(p: &Plan) -> [f64; 3] {
    let d = &p.predicted;
    [
        d.device_ms,
        d.rtt_ms + d.uplink_ms + d.uplink2_ms + d.downlink_ms,
        d.server_queue_ms + d.server_ms + d.cloud_queue_ms + d.cloud_ms,
    ]
}

fn rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.3} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.3} Mbit/s", bps / 1e6)
    } else {
        format!("{:.1} kbit/s", bps / 1e3)
    }
}

fn describe(p: &Plan, last: usize) -> String {
    if p.cuts[0] == last {
        return "device only".into();
    }
    let cuts = p.cuts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("→");
    let codecs = p.codecs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("→");
    format!("cut {cuts} {codecs}, {:.1} ms", p.predicted.total_ms)
}

#[allow(clippy::too_many_arguments)]
fn print_plan(
    graph: &ModelGraph,
    problem: &Problem,
    best: &Plan,
    device: &Profile,
    server: &Profile,
    cloud: Option<&Profile>,
    link: &Link,
    args: &Args,
) {
    let cuts = graph.cuts();
    let last = problem.last();
    let d = &best.predicted;
    println!("model     {} ({} cuts)", graph.name(), graph.num_cuts());
    println!(
        "link      uplink {}, downlink {}, RTT {} ms; server queue {} ms",
        rate(link.up_bps),
        rate(link.down_bps),
        link.rtt_ms,
        args.server_queue
    );
    print!("machines  device `{}`, server `{}`", device.device, server.device);
    if let Some(c) = cloud {
        print!(", cloud `{}`", c.device);
    }
    println!();
    if best.cuts[0] == last {
        println!("plan      run everything on the device (cut {last})");
    } else {
        let where_: Vec<String> = best
            .cuts
            .iter()
            .filter(|&&c| c < last)
            .map(|&c| match &cuts[c].after {
                Some(a) => format!("cut {c} (after {a})"),
                None => format!("cut {c} (the raw input)"),
            })
            .collect();
        let codecs: Vec<String> = best.codecs.iter().map(|c| c.to_string()).collect();
        println!(
            "plan      {} with {}, sending {}",
            where_.join(" then "),
            codecs.join(" then "),
            human_bytes(d.bytes_up.round() as u64)
        );
    }
    if let Some(e) = &best.exit {
        println!(
            "exit      {e} at confidence ≥ {}: {:.0}% of frames answer on the device in {:.2} ms",
            best.exit_threshold.map(|t| format!("{t:.2}")).unwrap_or_else(|| "?".into()),
            d.exit_rate * 100.0,
            d.exit_ms
        );
    }
    println!(
        "predicted {:.2} ms expected; a sent frame: device {:.2} + RTT {:.2} + uplink {:.2} + queue {:.2} + server {:.2}{} + downlink {:.2}",
        d.total_ms,
        d.device_ms,
        d.rtt_ms,
        d.uplink_ms,
        d.server_queue_ms,
        d.server_ms,
        if d.cloud_ms > 0.0 || d.uplink2_ms > 0.0 {
            format!(" + edge→cloud {:.2} + cloud queue {:.2} + cloud {:.2}", d.uplink2_ms, d.cloud_queue_ms, d.cloud_ms)
        } else {
            String::new()
        },
        d.downlink_ms
    );
    println!("          device energy {:.3} J, accuracy drop {:.2}%", d.energy_j, d.accuracy_drop * 100.0);
}

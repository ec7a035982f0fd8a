//! The device of `cleave bench trace` as its own process.
//!
//! The device must be a separate process so that it alone can run under a CPU limit
//! ([`crate::cgroup`]): the benchmark's own process holds the link proxy and the clock, which
//! must not be slowed. The orchestrator starts `cleave bench trace-device` (a hidden command
//! that calls [`worker`]), optionally moves it into a cgroup, and talks to it in JSON lines:
//!
//! 1. orchestrator → device: one [`Setup`]. The device loads the model, profiles its own
//!    compute (so under a quota the profile is the slowed device's, measured, not assumed),
//!    compiles every candidate head, warms the edge's tails directly, and answers
//!    [`FromDevice::Ready`] with its profile.
//! 2. For each strategy: orchestrator → device [`RunStrategy`] (the proxy's address and the
//!    link's time origin as wall-clock nanoseconds, so both processes count frame times from
//!    the same instant); device → orchestrator [`FromDevice::Done`] with every frame's record.
//! 3. End of input: the device exits.
//!
//! Any failure on the device side is one [`FromDevice::Error`] line, then exit.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cleave_codec::Codec;
use cleave_cost::Profile;
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::{InputShapes, ModelGraph};
use cleave_node::EdgeClient;
use cleave_node::adaptive::{self, AdaptiveConfig, AdaptiveDevice, AdaptiveRecord, Strategy};
use cleave_plan::{Problem, ProblemBuilder};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::cgroup::CpuLimit;
use crate::trace::TraceBenchError;

/// Where each frame's input comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FrameSource {
    /// Random values, seeded by the frame number.
    Random,
    /// One `.npy` tensor, the same for every frame (single-input models).
    Npy(PathBuf),
    /// Sample `k mod N` of the `x` array of an `.npz` (N samples; single-input models),
    /// normalised as given.
    Dataset(PathBuf, Pixels),
}

/// How stored samples become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Pixels {
    /// Cast to the input's type, values unchanged (e.g. raw 0..255 for the digits model).
    #[default]
    AsStored,
    /// uint8 images → value / 255.
    Unit,
    /// uint8 RGB images → ImageNet mean/std normalisation.
    ImageNet,
    /// The same with the channels reversed to B, G, R (PaddleOCR's detectors).
    ImageNetBgr,
}

impl std::str::FromStr for Pixels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "as-stored" | "raw" => Ok(Pixels::AsStored),
            "unit" => Ok(Pixels::Unit),
            "imagenet" => Ok(Pixels::ImageNet),
            "imagenet-bgr" => Ok(Pixels::ImageNetBgr),
            _ => Err(format!("unknown normalisation `{s}` (known: as-stored, unit, imagenet, imagenet-bgr)")),
        }
    }
}

/// Everything the device needs before its first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub model_path: PathBuf,
    pub shapes: InputShapes,
    /// The edge's profile (the planner's server side).
    pub edge_profile: Profile,
    pub codecs: Vec<Codec>,
    /// Every cut any strategy may use; their heads are compiled ahead.
    pub cuts: Vec<usize>,
    /// Compute multiplier applied on top of the measured compute (1 under a real CPU limit).
    pub slowdown: f64,
    pub timeout_ms: f64,
    /// The edge, directly (not through the link), for warming its tails.
    pub edge: SocketAddr,
    pub frames: usize,
    pub source: FrameSource,
    /// The adaptive device's hedging policy.
    #[serde(default)]
    pub hedge: cleave_node::adaptive::Hedge,
}

/// Run one strategy through the link at `proxy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStrategy {
    pub strategy: Strategy,
    /// The cuts the adaptive device may choose from (ignored by fixed strategies).
    pub cuts: Vec<usize>,
    pub proxy: SocketAddr,
    /// The link's time origin (trace millisecond `start_offset_ms`), wall clock.
    pub origin_unix_ns: u128,
    /// First release, after the origin.
    pub lead_ms: f64,
    pub fps: f64,
    pub max_backlog_ms: f64,
    /// Measure the link before the first frame (adaptive only).
    pub bootstrap: bool,
    /// The adaptive device's hedging policy for this run (default: the set-up's).
    #[serde(default)]
    pub hedge: Option<cleave_node::adaptive::Hedge>,
}

/// The device's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromDevice {
    Ready {
        /// The device's profile, fitted to the whole model timed on its compute thread.
        profile: Profile,
        /// The device-only time of the profile as measured operator by operator, before the
        /// fit, ms.
        profiled_whole_ms: f64,
    },
    /// One frame is answered (for live progress; the record comes with `Done`).
    Frame {
        frame: usize,
        cut: usize,
        codec: Option<Codec>,
        latency_ms: f64,
        estimate_mbps: f64,
    },
    Done {
        records: Vec<AdaptiveRecord>,
        stopped: bool,
    },
    Error {
        message: String,
    },
}

/// `instant` as wall-clock nanoseconds since the Unix epoch.
pub fn to_unix_ns(instant: Instant) -> u128 {
    let ago = Instant::now().saturating_duration_since(instant);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(ago).as_nanos()
}

/// The instant of a wall-clock time given by [`to_unix_ns`] (clamped to now if it is ahead).
pub fn from_unix_ns(ns: u128) -> Instant {
    let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let ago = Duration::from_nanos(now_wall.saturating_sub(ns).min(u64::MAX as u128) as u64);
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// The problem both sides plan with: `device` compute, the edge's, `codecs`, limited to `cuts`.
pub fn problem(
    graph: &ModelGraph,
    device: &Profile,
    edge: &Profile,
    codecs: &[Codec],
    cuts: &BTreeSet<usize>,
) -> Problem {
    let mut p = ProblemBuilder::new(graph, device).server(edge.clone()).codecs(codecs.to_vec()).build();
    adaptive::restrict_cuts(&mut p, cuts);
    p
}

/// Loads every frame's inputs.
pub fn load_frames(graph: &ModelGraph, source: &FrameSource, n: usize) -> Result<Vec<TensorMap>, String> {
    let specs = graph.inputs();
    match source {
        FrameSource::Random => {
            Ok((0..n).map(|k| specs.iter().map(|s| (s.name.clone(), random_input(s, k as u64))).collect()).collect())
        }
        FrameSource::Npy(path) => {
            let [spec] = specs.as_slice() else {
                return Err(format!("an input file works for single-input models; this one has {}", specs.len()));
            };
            let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let t = cleave_data::npy::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            cleave_engine::check_input(spec, &t).map_err(|e| format!("{}: {e}", path.display()))?;
            let t = Arc::new(t);
            Ok((0..n).map(|_| [(spec.name.clone(), t.clone())].into_iter().collect()).collect())
        }
        FrameSource::Dataset(path, pixels) => {
            let [spec] = specs.as_slice() else {
                return Err(format!("a dataset works for single-input models; this one has {}", specs.len()));
            };
            let file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let arrays = cleave_data::npz::read(std::io::BufReader::new(file), 1 << 30)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (_, x) = arrays
                .into_iter()
                .find(|(name, _)| name == "x")
                .ok_or_else(|| format!("{}: no array named `x`", path.display()))?;
            let per: usize = spec.shape.iter().product();
            let samples = x.shape().first().copied().unwrap_or(0);
            if per == 0 || samples == 0 || x.len() != samples * per {
                return Err(format!(
                    "{}: `x` has shape {:?}, which is not N samples of the input's shape {:?}",
                    path.display(),
                    x.shape(),
                    spec.shape
                ));
            }
            let dt = spec.dtype.datum_type();
            use cleave_data::image::{ChannelOrder, Normalize, image_frames_as};
            let normalized = match pixels {
                Pixels::AsStored => None,
                Pixels::Unit => Some(image_frames_as(&x, Normalize::Unit, ChannelOrder::Rgb)),
                Pixels::ImageNet => Some(image_frames_as(&x, Normalize::imagenet(), ChannelOrder::Rgb)),
                Pixels::ImageNetBgr => Some(image_frames_as(&x, Normalize::imagenet(), ChannelOrder::Bgr)),
            };
            let normalized = normalized.transpose().map_err(|e| format!("{}: {e}", path.display()))?;
            (0..n)
                .map(|k| {
                    let i = k % samples;
                    let t = match &normalized {
                        None => x.slice(0, i, i + 1).and_then(|row| row.cast_to_dt(dt).map(|c| c.into_owned())),
                        Some(frames) => cleave_engine::Tensor::from_shape(&frames[i].0, &frames[i].1)
                            .and_then(|t| t.cast_to_dt(dt).map(|c| c.into_owned())),
                    }
                    .and_then(|row| row.into_shape(&spec.shape))
                    .map_err(|e| format!("{}: sample {i}: {e}", path.display()))?;
                    Ok([(spec.name.clone(), Arc::new(t))].into_iter().collect())
                })
                .collect()
        }
    }
}

/// The device worker: reads a [`Setup`] and [`RunStrategy`] lines from stdin, answers on
/// stdout (see the module docs). Returns when stdin ends.
pub async fn worker() -> Result<(), TraceBenchError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let result = serve(&mut lines, &mut out).await;
    if let Err(e) = &result {
        let _ = send(&mut out, &FromDevice::Error { message: e.to_string() }).await;
    }
    result
}

async fn send(out: &mut (impl AsyncWriteExt + Unpin), msg: &FromDevice) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await
}

async fn serve(
    lines: &mut Lines<BufReader<tokio::io::Stdin>>,
    out: &mut tokio::io::Stdout,
) -> Result<(), TraceBenchError> {
    let dev = |e: &dyn std::fmt::Display| TraceBenchError::Device(e.to_string());
    let Some(first) = lines.next_line().await.map_err(|e| dev(&e))? else { return Ok(()) };
    let setup: Setup = serde_json::from_str(&first).map_err(|e| dev(&format!("bad set-up message: {e}")))?;
    let bytes = std::fs::read(&setup.model_path).map_err(|e| dev(&format!("{}: {e}", setup.model_path.display())))?;
    let graph = Arc::new(ModelGraph::from_bytes(&bytes, &setup.shapes).map_err(|e| dev(&e))?);
    let cuts: BTreeSet<usize> = setup.cuts.iter().copied().collect();
    let engine = Arc::new(Engine::new(EngineConfig { threads: 1, cache_capacity: 2 * cuts.len() + 16 }));
    let popts =
        cleave_engine::profile::ProfileOptions { warmup: 1, repeats: 3, device: "device".into(), host: crate::host() };
    let g = graph.clone();
    let e = engine.clone();
    let measured = tokio::task::spawn_blocking(move || {
        cleave_engine::profile::profile(&e, &g, &popts, &mut |_: usize, _: usize, _: &str| {})
    })
    .await
    .map_err(|e| dev(&e))?
    .map_err(|e| dev(&e))?;
    let mut profile = if setup.slowdown > 1.0 { measured.scaled(setup.slowdown, "device") } else { measured };
    let mut base = problem(&graph, &profile, &setup.edge_profile, &setup.codecs, &cuts);
    let frames = load_frames(&graph, &setup.source, setup.frames).map_err(|e| dev(&e))?;
    let config = AdaptiveConfig {
        model_name: "m".into(),
        timeout: Duration::from_secs_f64(setup.timeout_ms / 1e3),
        device_slowdown: setup.slowdown.max(1.0),
        // The bench's downlink is not shaped: only the one-way delay applies.
        down_bps: Some(1e9),
        probe: true,
        hedge: setup.hedge,
        fleet: false,
    };
    // The threads `prepare` warms, for every run (fresh ones would start cold). The device's
    // compute is then fitted to the whole model timed on them (see "Compute as measured" in
    // `cleave_node::adaptive`), and every run plans with the fitted profile.
    let (threads, fit) = {
        let direct = EdgeClient::connect(&setup.edge.to_string(), 64 << 20).await.map_err(|e| dev(&e))?;
        let mut warm = AdaptiveDevice::new(
            engine.clone(),
            graph.clone(),
            Some(direct.clone()),
            base.clone(),
            Strategy::Adaptive,
            config.clone(),
        )
        .map_err(|e| dev(&e))?;
        let (warm, fit) = tokio::task::spawn_blocking(move || {
            warm.prepare()?;
            let fit = warm.fit_device_to_measured()?;
            Ok::<_, adaptive::AdaptiveError>((warm, fit))
        })
        .await
        .map_err(|e| dev(&e))?
        .map_err(|e| dev(&e))?;
        warm.warm_server(&direct).await.map_err(|e| dev(&e))?;
        (warm.threads(), fit)
    };
    let (profiled_whole_ms, fitted_whole_ms) = fit;
    if profiled_whole_ms > 0.0 && fitted_whole_ms > 0.0 {
        profile = profile.scaled(fitted_whole_ms / profiled_whole_ms, "device");
        base = problem(&graph, &profile, &setup.edge_profile, &setup.codecs, &cuts);
    }
    send(out, &FromDevice::Ready { profile, profiled_whole_ms }).await.map_err(|e| dev(&e))?;

    while let Some(line) = lines.next_line().await.map_err(|e| dev(&e))? {
        let run: RunStrategy = serde_json::from_str(&line).map_err(|e| dev(&format!("bad run message: {e}")))?;
        let mut p = base.clone();
        if run.strategy == Strategy::Adaptive {
            adaptive::restrict_cuts(&mut p, &run.cuts.iter().copied().collect());
        }
        let client = EdgeClient::connect(&run.proxy.to_string(), 64 << 20).await.map_err(|e| dev(&e))?;
        let origin = from_unix_ns(run.origin_unix_ns);
        let mut config = config.clone();
        if let Some(h) = run.hedge {
            config.hedge = h;
        }
        let mut device = AdaptiveDevice::new(engine.clone(), graph.clone(), Some(client), p, run.strategy, config)
            .map_err(|e| dev(&e))?
            .with_epoch(origin)
            .with_threads(threads.clone());
        let first = origin + Duration::from_secs_f64(run.lead_ms / 1e3);
        if run.bootstrap && run.strategy == Strategy::Adaptive {
            // Never past the first release: on a slow trace the probe alone can take longer
            // than the lead, and that wait would be charged to frame 0.
            device.bootstrap_until(first).await;
        }
        let backlog = Duration::from_secs_f64(run.max_backlog_ms / 1e3);
        let mut records = Vec::with_capacity(frames.len());
        let mut stopped = false;
        for (k, inputs) in frames.iter().enumerate() {
            let release = first + Duration::from_secs_f64(k as f64 / run.fps);
            if Instant::now() > release + backlog {
                stopped = true;
                break;
            }
            tokio::time::sleep_until(release.into()).await;
            let (rec, _) = device.frame(k, inputs.clone(), release).await;
            let live = FromDevice::Frame {
                frame: k,
                cut: rec.cut,
                codec: rec.codec,
                latency_ms: rec.total_ms,
                estimate_mbps: rec.estimate.up_bps / 1e6,
            };
            send(out, &live).await.map_err(|e| dev(&e))?;
            records.push(rec);
        }
        send(out, &FromDevice::Done { records, stopped }).await.map_err(|e| dev(&e))?;
    }
    Ok(())
}

/// The orchestrator's handle on a device worker process.
pub struct DeviceProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    limit: Option<CpuLimit>,
}

impl DeviceProcess {
    /// Starts `exe bench trace-device`, inside `limit` when given.
    pub fn spawn(exe: &Path, limit: Option<CpuLimit>) -> Result<DeviceProcess, TraceBenchError> {
        let mut child = Command::new(exe)
            .args(["bench", "trace-device"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TraceBenchError::Device(format!("cannot start {} bench trace-device: {e}", exe.display())))?;
        if let Some(l) = &limit {
            let pid = child.id().ok_or_else(|| TraceBenchError::Device("the device exited at once".into()))?;
            l.add(pid).map_err(|e| TraceBenchError::Device(format!("cannot move the device into its cgroup: {e}")))?;
        }
        let stdin = child.stdin.take().ok_or_else(|| TraceBenchError::Device("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| TraceBenchError::Device("no stdout".into()))?;
        Ok(DeviceProcess { child, stdin, stdout: BufReader::new(stdout).lines(), limit })
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &impl Serialize) -> Result<(), TraceBenchError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| TraceBenchError::Device(e.to_string()))?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .map_err(|e| TraceBenchError::Device(format!("the device process is gone: {e}")))
    }

    /// Waits for the next answer; a device-side error becomes an error here.
    pub async fn recv(&mut self) -> Result<FromDevice, TraceBenchError> {
        let line = self
            .stdout
            .next_line()
            .await
            .map_err(|e| TraceBenchError::Device(e.to_string()))?
            .ok_or_else(|| TraceBenchError::Device("the device process exited (its error is above)".into()))?;
        match serde_json::from_str(&line) {
            Ok(FromDevice::Error { message }) => Err(TraceBenchError::Device(message)),
            Ok(m) => Ok(m),
            Err(e) => Err(TraceBenchError::Device(format!("unreadable answer from the device ({e}): {line}"))),
        }
    }

    /// Ends the worker and waits for it, then removes its cgroup.
    pub async fn finish(mut self) {
        let _ = self.stdin.shutdown().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        drop(self.limit.take());
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        if let Some(limit) = self.limit.take() {
            // The cgroup can only be removed once the process has exited.
            let _ = self.child.start_kill();
            for _ in 0..100 {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_round_trip_is_close() {
        let t = Instant::now() - Duration::from_millis(250);
        let back = from_unix_ns(to_unix_ns(t));
        let err = if back > t { back - t } else { t - back };
        assert!(err < Duration::from_millis(5), "{err:?}");
    }
}

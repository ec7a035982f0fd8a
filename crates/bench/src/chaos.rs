//! `cleave bench chaos`: one device streams frames to two edge replicas (real `cleave serve`
//! processes) while a nemesis kills and restarts them, blackholes their links and resets their
//! connections; then every frame's history is checked.
//!
//! Setup: each replica sits behind its own user-space proxy ([`cleave_link::LinkProxy`],
//! unshaped), which is how a link is blackholed (bytes held, nothing delivered, connections kept
//! open) or reset (every connection gets a TCP RST). The device lists the two proxies in order
//! ([`cleave_node::Endpoints`]); it runs in this process, releases frames at `fps`, and gives
//! each a deadline.
//!
//! The nemesis waits a random gap, picks a replica, and injects the next fault of a shuffled
//! cycle of the kinds, so every kind occurs: `kill -9` (restarted on the same port 1–3 s
//! later), a blackhole of 1–5 s, a reset, or a partition (both links silent for 1–3 s, so the
//! device must answer by itself: degraded frames). One fault at a time; a seed makes the
//! schedule reproducible (the machine's timing still varies).
//!
//! The history check: every frame has exactly one result; a remote result equals the tail
//! computed locally on what was sent (so within the codec's bound of the whole model) and its
//! boundary error is within the codec's bound; a degraded (local) result equals the whole
//! model's local output; no result comes after its deadline.
//!
//! Detection time: from a kill or blackhole to the device marking that replica down (the first
//! such event after the fault). Failover time: for a frame whose first attempt failed and that a
//! server then answered, from that failure to the answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_codec::{Codec, EncodeOptions};
use cleave_engine::{Engine, EngineConfig, TensorMap, random_input};
use cleave_graph::{InputShapes, ModelGraph};
use cleave_link::{LinkConfig, LinkHandle, LinkProxy, SplitMix64};
use cleave_node::{ClientSecurity, Device, DeviceConfig, Endpoints, FailoverConfig, FrameStatus};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::stats::quantile;
use crate::trace::{EdgeProcess, spawn_edge};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The `cleave` executable (for `serve`).
    pub exe: PathBuf,
    /// The model file both replicas serve.
    pub model_path: PathBuf,
    pub shapes: InputShapes,
    pub frames: usize,
    pub fps: f64,
    /// Each frame's deadline, from its release.
    pub deadline: Duration,
    /// The cut (default: the middle one).
    pub cut: Option<usize>,
    pub codec: Codec,
    /// Frames on the network at once.
    pub max_in_flight: usize,
    pub seed: u64,
    /// Gap between the end of one fault and the next, drawn uniformly in this range.
    pub gap: (Duration, Duration),
    pub failover: FailoverConfig,
}

impl ChaosOptions {
    pub fn new(exe: PathBuf, model_path: PathBuf) -> ChaosOptions {
        ChaosOptions {
            exe,
            model_path,
            shapes: InputShapes::none(),
            frames: 2000,
            fps: 50.0,
            deadline: Duration::from_millis(500),
            cut: None,
            codec: Codec::Int8,
            max_in_flight: 8,
            seed: 1,
            gap: (Duration::from_millis(1000), Duration::from_millis(3000)),
            failover: FailoverConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Options(String),
    #[error("the model: {0}")]
    Model(String),
    #[error("a replica: {0}")]
    Replica(String),
    #[error("a link proxy: {0}")]
    Link(String),
    #[error("the device: {0}")]
    Device(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    Blackhole,
    Reset,
    /// Both replicas' links blackholed at once: the device is cut off and must answer locally.
    Partition,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// The replicas it hit.
    pub replicas: Vec<usize>,
    /// From the start of the run.
    pub at_ms: f64,
    /// How long the replica stayed dead or its link silent (0 for a reset).
    pub duration_ms: f64,
    /// From the fault to the device marking the (last) replica down, when it did.
    pub detected_after_ms: Option<f64>,
    /// A replica it hit was already marked down when the fault came.
    pub already_down: bool,
}

/// The report `cleave bench chaos` prints and writes.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub frames: usize,
    /// Frames without a result.
    pub lost: usize,
    /// Results beyond the first for a frame.
    pub duplicated: usize,
    /// Frames the device completed itself (no server answered in time).
    pub degraded: usize,
    /// Results after their deadline.
    pub late: usize,
    /// Results that fail the reference check.
    pub wrong: usize,
    pub detection_p50_ms: f64,
    pub detection_p99_ms: f64,
    pub failover_p50_ms: f64,
    pub failover_p99_ms: f64,
    pub throughput_fps: f64,
    /// Frames answered by each replica.
    pub remote_by_replica: Vec<usize>,
    /// Frames that needed more than one attempt.
    pub retried: usize,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub deadline_ms: f64,
    pub cut: usize,
    pub codec: Codec,
    pub faults: Vec<Fault>,
    /// Why the first few wrong or late frames failed, for debugging.
    pub problems: Vec<String>,
}

impl ChaosReport {
    pub fn render(&self) -> String {
        let count = |k: FaultKind| self.faults.iter().filter(|f| f.kind == k).count();
        let mut s = String::new();
        s += &format!(
            "{} frames at cut {} ({}), deadline {:.0} ms; faults: {} kill -9, {} blackhole, {} reset, {} partition\n",
            self.frames,
            self.cut,
            self.codec,
            self.deadline_ms,
            count(FaultKind::Kill),
            count(FaultKind::Blackhole),
            count(FaultKind::Reset),
            count(FaultKind::Partition)
        );
        s += &format!(
            "lost {}, duplicated {}, late {}, wrong {}; degraded {} ({} retried; replicas answered {:?})\n",
            self.lost, self.duplicated, self.late, self.wrong, self.degraded, self.retried, self.remote_by_replica
        );
        s += &format!(
            "detection p50 {:.1} ms, p99 {:.1} ms; failover p50 {:.1} ms, p99 {:.1} ms\n",
            self.detection_p50_ms, self.detection_p99_ms, self.failover_p50_ms, self.failover_p99_ms
        );
        s += &format!(
            "latency p50 {:.2} ms, p99 {:.2} ms; {:.1} frames/s",
            self.latency_p50_ms, self.latency_p99_ms, self.throughput_fps
        );
        for p in &self.problems {
            s += &format!("\n  problem: {p}");
        }
        s
    }
}

/// The nemesis' random numbers: link's SplitMix64, so a seed names the same schedule.
struct Rng(SplitMix64);

impl Rng {
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi.saturating_sub(lo)).mul_f64(self.0.unit())
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }
}

struct Replica {
    process: Option<EdgeProcess>,
    port: u16,
    link: LinkHandle,
}

/// Runs the chaos bench; `log` receives a line per fault.
pub async fn run(
    graph: Arc<ModelGraph>,
    opts: &ChaosOptions,
    log: impl Fn(String) + Send + Sync + 'static,
) -> Result<ChaosReport, ChaosError> {
    if !(opts.fps.is_finite() && opts.fps > 0.0) {
        return Err(ChaosError::Options(format!("fps must be positive, not {}", opts.fps)));
    }
    if opts.frames == 0 {
        return Err(ChaosError::Options("frames must be at least 1".into()));
    }
    let last = graph.last_cut();
    if last == 0 {
        return Err(ChaosError::Model("the model has no cut with a tail to offload".into()));
    }
    let cut = opts.cut.unwrap_or(last / 2);
    if cut >= last {
        return Err(ChaosError::Options(format!("cut {cut} has no tail: choose a cut below {last}")));
    }
    let log = Arc::new(log);

    // Two replicas, each behind its own proxy.
    let mut replicas = vec![];
    let mut proxies = vec![];
    for _ in 0..2 {
        let (exe, model, shapes) = (opts.exe.clone(), opts.model_path.clone(), opts.shapes.clone());
        let p = tokio::task::spawn_blocking(move || spawn_edge(&exe, &model, &shapes, 8, 0))
            .await
            .map_err(|e| ChaosError::Replica(e.to_string()))?
            .map_err(|e| ChaosError::Replica(e.to_string()))?;
        let proxy =
            LinkProxy::start(p.grpc, LinkConfig::default()).await.map_err(|e| ChaosError::Link(e.to_string()))?;
        replicas.push(Replica { port: p.grpc.port(), process: Some(p), link: proxy.handle() });
        proxies.push(proxy);
    }
    let addrs: Vec<String> = proxies.iter().map(|p| p.local_addr().to_string()).collect();
    let endpoints = Arc::new(
        Endpoints::connect(
            &addrs,
            64 << 20,
            &ClientSecurity::default(),
            opts.failover.clone(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| ChaosError::Device(e.to_string()))?,
    );
    let config = DeviceConfig {
        model_name: "m".into(),
        cut,
        encode: EncodeOptions::new(opts.codec),
        max_in_flight: opts.max_in_flight.max(1),
        timeout: Some(opts.deadline),
        fps: Some(opts.fps),
        check: true,
    };
    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let device = Arc::new(
        Device::with_endpoints(engine, graph.clone(), Some(endpoints.clone()), config).map_err(ChaosError::Device)?,
    );
    // Warm both replicas (their tails compile on the first request) before the clock starts.
    let frames: Vec<TensorMap> = (0..opts.frames)
        .map(|k| graph.inputs().iter().map(|s| (s.name.clone(), random_input(s, k as u64))).collect())
        .collect();
    {
        let env = device.head_output(&frames[0]).map_err(ChaosError::Device)?;
        for i in 0..2 {
            let (mut req, _) = device.request(0, &env).map_err(ChaosError::Device)?;
            req.id = format!("warm-{i}");
            let mut c = cleave_node::EdgeClient::connect(&addrs[i], 64 << 20)
                .await
                .map_err(|e| ChaosError::Replica(e.to_string()))?;
            c.infer(req, Some(Duration::from_secs(60))).await.map_err(|e| ChaosError::Replica(e.to_string()))?;
        }
    }

    let start = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replicas = Arc::new(Mutex::new(replicas));
    let nemesis = {
        let (done, replicas, opts, log) = (done.clone(), replicas.clone(), opts.clone(), log.clone());
        tokio::spawn(async move { nemesis(start, done, replicas, &opts, &*log).await })
    };
    let out = device.run(frames).await;
    let elapsed = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut faults = nemesis.await.map_err(|e| ChaosError::Device(format!("the nemesis failed: {e}")))??;
    // Restore everything before the processes go (Drop kills them).
    drop(replicas);

    // Detection: the first down event of the faulted replica after the fault.
    let events = endpoints.events();
    for f in faults.iter_mut().filter(|f| f.kind != FaultKind::Reset) {
        let at = start + Duration::from_secs_f64(f.at_ms / 1e3);
        let mut worst: Option<f64> = Some(0.0);
        for &r in &f.replicas {
            // Down at the fault's instant (an earlier fault, or a slow probe): nothing to detect.
            let before: Vec<_> = events.iter().filter(|e| e.endpoint == r && e.at < at).collect();
            f.already_down |= before.last().is_some_and(|e| !e.up);
            let first = events
                .iter()
                .filter(|e| e.endpoint == r && !e.up && e.at >= at)
                .map(|e| (e.at - at).as_secs_f64() * 1e3)
                .next();
            worst = worst.zip(first).map(|(a, b)| a.max(b));
        }
        f.detected_after_ms = if f.already_down { None } else { worst };
    }

    // The history check.
    let mut results: HashMap<usize, usize> = HashMap::new();
    let (mut late, mut wrong, mut degraded, mut retried) = (0, 0, 0, 0);
    let mut problems = vec![];
    let mut by_replica = vec![0; 2];
    let deadline_ms = opts.deadline.as_secs_f64() * 1e3;
    let mut latencies = vec![];
    let mut failovers = vec![];
    for f in &out {
        let r = &f.record;
        *results.entry(r.frame).or_default() += 1;
        latencies.push(r.total_ms);
        if r.attempts > 1 {
            retried += 1;
        }
        if let Some(ms) = r.failover_ms {
            failovers.push(ms);
        }
        if r.total_ms > deadline_ms {
            late += 1;
            if problems.len() < 10 {
                problems.push(format!("frame {} late: {:.1} ms ({:?})", r.frame, r.total_ms, r.error));
            }
        }
        let ok = match (&r.check, r.status, f.outputs.is_empty()) {
            (_, _, true) => Err("no outputs".to_string()),
            (None, _, _) => Err("not checked (the local reference failed)".into()),
            (Some(c), FrameStatus::Remote, _) => {
                if let Some(i) = r.endpoint.as_deref().and_then(|a| addrs.iter().position(|x| x == a)) {
                    by_replica[i] += 1;
                }
                if c.vs_local_tail <= 1e-4 && c.boundary_error_vs_bound <= 1.0 {
                    Ok(())
                } else {
                    Err(format!("remote result off: {c:?}"))
                }
            }
            (Some(c), FrameStatus::LocalFallback, _) => {
                degraded += 1;
                if c.vs_whole <= 1e-5 { Ok(()) } else { Err(format!("degraded result off: {c:?}")) }
            }
            (_, s, _) => Err(format!("unexpected status {s:?}")),
        };
        if let Err(why) = ok {
            wrong += 1;
            if problems.len() < 10 {
                problems.push(format!("frame {}: {why}", r.frame));
            }
        }
    }
    let lost = (0..opts.frames).filter(|k| !results.contains_key(k)).count();
    let duplicated = results.values().map(|&n| n.saturating_sub(1)).sum();
    let mut detections: Vec<f64> = faults.iter().filter_map(|f| f.detected_after_ms).collect();
    let q = |v: &mut Vec<f64>, p: f64| if v.is_empty() { f64::NAN } else { quantile(v, p) };
    Ok(ChaosReport {
        frames: opts.frames,
        lost,
        duplicated,
        degraded,
        late,
        wrong,
        detection_p50_ms: q(&mut detections, 0.5),
        detection_p99_ms: q(&mut detections, 0.99),
        failover_p50_ms: q(&mut failovers, 0.5),
        failover_p99_ms: q(&mut failovers, 0.99),
        throughput_fps: out.len() as f64 / elapsed.as_secs_f64(),
        remote_by_replica: by_replica,
        retried,
        latency_p50_ms: q(&mut latencies, 0.5),
        latency_p99_ms: q(&mut latencies, 0.99),
        deadline_ms,
        cut,
        codec: opts.codec,
        faults,
        problems,
    })
}

async fn nemesis(
    start: Instant,
    done: Arc<std::sync::atomic::AtomicBool>,
    replicas: Arc<Mutex<Vec<Replica>>>,
    opts: &ChaosOptions,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<Vec<Fault>, ChaosError> {
    let mut rng = Rng(SplitMix64(opts.seed));
    let mut faults = vec![];
    let mut cycle: Vec<FaultKind> = vec![];
    let is_done = || done.load(std::sync::atomic::Ordering::Acquire);
    // Sleeps, waking early when the run ends.
    let nap = |d: Duration| async move {
        let until = Instant::now() + d;
        while Instant::now() < until && !is_done() {
            tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(50))).await;
        }
    };
    loop {
        nap(rng.between(opts.gap.0, opts.gap.1)).await;
        if is_done() {
            break;
        }
        if cycle.is_empty() {
            cycle = vec![FaultKind::Kill, FaultKind::Blackhole, FaultKind::Reset, FaultKind::Partition];
            for i in (1..cycle.len()).rev() {
                cycle.swap(i, rng.below(i + 1));
            }
        }
        let kind = cycle.pop().expect("refilled");
        let replica = rng.below(2);
        let at = start.elapsed();
        let mut fault = Fault {
            kind,
            replicas: if kind == FaultKind::Partition { vec![0, 1] } else { vec![replica] },
            at_ms: at.as_secs_f64() * 1e3,
            duration_ms: 0.0,
            detected_after_ms: None,
            already_down: false,
        };
        match kind {
            FaultKind::Kill => {
                let down_for = rng.between(Duration::from_secs(1), Duration::from_secs(3));
                let (port, process) = {
                    let mut r = replicas.lock().await;
                    let rep = &mut r[replica];
                    if let Some(p) = rep.process.as_mut() {
                        p.kill9();
                    }
                    (rep.port, rep.process.take())
                };
                drop(process);
                log(format!(
                    "{:>7.1} s  kill -9 replica {replica}; restart in {:.1} s",
                    at.as_secs_f64(),
                    down_for.as_secs_f64()
                ));
                nap(down_for).await;
                let (exe, model, shapes) = (opts.exe.clone(), opts.model_path.clone(), opts.shapes.clone());
                let p = tokio::task::spawn_blocking(move || spawn_edge(&exe, &model, &shapes, 8, port))
                    .await
                    .map_err(|e| ChaosError::Replica(e.to_string()))?
                    .map_err(|e| ChaosError::Replica(format!("restarting replica {replica}: {e}")))?;
                replicas.lock().await[replica].process = Some(p);
                fault.duration_ms = (start.elapsed() - at).as_secs_f64() * 1e3;
                log(format!("{:>7.1} s  replica {replica} restarted", start.elapsed().as_secs_f64()));
            }
            FaultKind::Blackhole => {
                let silent_for = rng.between(Duration::from_secs(1), Duration::from_secs(5));
                let link = replicas.lock().await[replica].link.clone();
                link.blackhole(true);
                log(format!(
                    "{:>7.1} s  blackhole replica {replica}'s link for {:.1} s",
                    at.as_secs_f64(),
                    silent_for.as_secs_f64()
                ));
                nap(silent_for).await;
                link.blackhole(false);
                fault.duration_ms = (start.elapsed() - at).as_secs_f64() * 1e3;
            }
            FaultKind::Partition => {
                let silent_for = rng.between(Duration::from_secs(1), Duration::from_secs(3));
                let links: Vec<LinkHandle> = replicas.lock().await.iter().map(|r| r.link.clone()).collect();
                for l in &links {
                    l.blackhole(true);
                }
                log(format!(
                    "{:>7.1} s  partition: both links silent for {:.1} s",
                    at.as_secs_f64(),
                    silent_for.as_secs_f64()
                ));
                nap(silent_for).await;
                for l in &links {
                    l.blackhole(false);
                }
                fault.duration_ms = (start.elapsed() - at).as_secs_f64() * 1e3;
            }
            FaultKind::Reset => {
                replicas.lock().await[replica].link.reset();
                log(format!("{:>7.1} s  reset replica {replica}'s connections", at.as_secs_f64()));
            }
        }
        faults.push(fault);
    }
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng(SplitMix64(7)), Rng(SplitMix64(7)));
        for _ in 0..100 {
            let (x, y) = (
                a.between(Duration::from_secs(1), Duration::from_secs(5)),
                b.between(Duration::from_secs(1), Duration::from_secs(5)),
            );
            assert_eq!(x, y);
            assert!(x >= Duration::from_secs(1) && x <= Duration::from_secs(5));
            assert!(a.below(2) < 2);
            b.below(2);
        }
    }
}

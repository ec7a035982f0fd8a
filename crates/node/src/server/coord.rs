//! Fleet coordination on the edge: the load signal every answer carries, and the joint plan of
//! the devices that report their options.
//!
//! - **Load signal** ([`LoadMeter`]): the workers' busy share, from the compute time of every
//!   answered request (a batch's time split over its requests), per window of
//!   [`LoadMeter::WINDOW`] and smoothed across windows. Every answer, probes included, carries it
//!   as `cleave.server_util`, so a device computing locally still learns the load by probing.
//! - **Coordination** ([`Coordinator`]): a device that sends `cleave.device` (its id) and, when
//!   its options changed, `cleave.fleet.report` (see `cleave_plan::fleet::DeviceReport`) is
//!   tracked; every `period` the coordinator solves the joint assignment of every device seen in
//!   the last `forget_after` ([`cleave_plan::fleet::solve`], pure) and answers each device's
//!   requests with its recommendation, `cleave.fleet.plan`. Devices that never report are not
//!   affected. The tracked devices are bounded ([`MAX_DEVICES`]); past that, new ids get no
//!   recommendation until old ones are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cleave_plan::fleet::{self, Capacity, DeviceReport, FleetObjective};

/// Most devices a coordinator tracks.
pub const MAX_DEVICES: usize = 4096;
/// Longest device id accepted.
pub const MAX_DEVICE_ID: usize = 128;

/// How the edge coordinates its devices.
#[derive(Debug, Clone)]
pub struct CoordConfig {
    /// How often the joint assignment is solved again.
    pub period: Duration,
    /// A device not heard from for this long leaves the plan.
    pub forget_after: Duration,
    pub objective: FleetObjective,
    /// Utilization the plan may use (the workers come from the batcher's configuration).
    pub max_utilization: f64,
}

impl Default for CoordConfig {
    fn default() -> Self {
        CoordConfig {
            period: Duration::from_millis(250),
            forget_after: Duration::from_secs(5),
            objective: FleetObjective::MeanLatency,
            max_utilization: 0.8,
        }
    }
}

/// The workers' busy share over recent windows.
pub struct LoadMeter {
    workers: usize,
    inner: Mutex<Meter>,
}

struct Meter {
    window_start: Instant,
    busy: Duration,
    util: f64,
}

impl LoadMeter {
    /// Length of one measurement window.
    pub const WINDOW: Duration = Duration::from_millis(250);
    /// Weight of the newest window.
    pub const ALPHA: f64 = 0.5;

    pub fn new(workers: usize) -> LoadMeter {
        LoadMeter {
            workers: workers.max(1),
            inner: Mutex::new(Meter { window_start: Instant::now(), busy: Duration::ZERO, util: 0.0 }),
        }
    }

    fn roll(&self, m: &mut Meter, now: Instant) {
        let elapsed = now.saturating_duration_since(m.window_start);
        if elapsed < Self::WINDOW {
            return;
        }
        let u = (m.busy.as_secs_f64() / (elapsed.as_secs_f64() * self.workers as f64)).clamp(0.0, 1.0);
        // Windows with nothing recorded in between count as idle ones.
        let idle_windows = (elapsed.as_secs_f64() / Self::WINDOW.as_secs_f64()).floor().max(1.0) - 1.0;
        m.util += Self::ALPHA * (u - m.util);
        m.util *= (1.0 - Self::ALPHA).powf(idle_windows.min(64.0));
        m.window_start = now;
        m.busy = Duration::ZERO;
    }

    /// The workers the utilization is a share of.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// One request's share of compute.
    pub fn record(&self, compute: Duration, now: Instant) {
        let mut m = self.inner.lock().expect("load meter lock");
        self.roll(&mut m, now);
        m.busy += compute;
    }

    /// The smoothed utilization, 0..1.
    pub fn utilization(&self, now: Instant) -> f64 {
        let mut m = self.inner.lock().expect("load meter lock");
        self.roll(&mut m, now);
        m.util
    }
}

/// The devices' reports and the current joint plan.
pub struct Coordinator {
    config: CoordConfig,
    capacity: Capacity,
    inner: Mutex<Plan>,
}

struct Plan {
    devices: HashMap<String, Tracked>,
    solved_at: Option<Instant>,
    /// Whether a report changed since the last solve.
    dirty: bool,
    /// The last solve's predicted utilization and objective (for logs and tests).
    last: Option<(f64, f64)>,
    /// Measured ÷ predicted utilization, smoothed: how much more server time a request really
    /// costs than the devices' profiles say (contention, request handling); scales the reported
    /// server times before solving. 1 until measured.
    scale: f64,
}

struct Tracked {
    report: DeviceReport,
    seen: Instant,
    recommendation: Option<String>,
}

impl Coordinator {
    pub fn new(config: CoordConfig, workers: usize) -> Coordinator {
        let capacity = Capacity { workers: workers.max(1), max_utilization: config.max_utilization.clamp(0.05, 0.99) };
        let plan = Plan { devices: HashMap::new(), solved_at: None, dirty: false, last: None, scale: 1.0 };
        Coordinator { config, capacity, inner: Mutex::new(plan) }
    }

    /// A request from device `id`, with its report when it sent one (already parsed). Returns
    /// the device's recommendation, if it has one. `measured_util` is the server's utilization now
    /// ([`LoadMeter`]), compared with the last plan's prediction to correct the server times.
    /// `Err` for an id that is too long.
    pub fn visit(
        &self,
        id: &str,
        report: Option<DeviceReport>,
        now: Instant,
        measured_util: f64,
    ) -> Result<Option<String>, String> {
        if id.is_empty() || id.len() > MAX_DEVICE_ID {
            return Err(format!("device id must be 1 to {MAX_DEVICE_ID} bytes"));
        }
        let mut plan = self.inner.lock().expect("coordinator lock");
        match (plan.devices.get_mut(id), report) {
            (Some(t), Some(r)) => {
                t.report = r;
                t.seen = now;
                plan.dirty = true;
            }
            (Some(t), None) => t.seen = now,
            (None, Some(r)) => {
                if plan.devices.len() >= MAX_DEVICES {
                    self.forget(&mut plan, now);
                }
                if plan.devices.len() < MAX_DEVICES {
                    plan.devices.insert(id.to_owned(), Tracked { report: r, seen: now, recommendation: None });
                    plan.dirty = true;
                }
            }
            (None, None) => return Ok(None),
        }
        let age = plan.solved_at.map(|t| now.saturating_duration_since(t));
        let due = age.is_none_or(|a| a >= self.config.period);
        let missing = plan.devices.get(id).is_some_and(|t| t.recommendation.is_none());
        let stale = age.is_none_or(|a| a >= self.config.forget_after);
        if due && (plan.dirty || missing || stale) {
            if let Some((predicted, _)) = plan.last
                && predicted > 0.05
                && measured_util.is_finite()
            {
                let ratio = (measured_util / predicted).clamp(0.5, 4.0);
                plan.scale = (0.7 * plan.scale + 0.3 * ratio).clamp(0.5, 4.0);
            }
            self.solve(&mut plan, now);
        }
        Ok(plan.devices.get(id).and_then(|t| t.recommendation.clone()))
    }

    fn forget(&self, plan: &mut Plan, now: Instant) {
        let before = plan.devices.len();
        plan.devices.retain(|_, t| now.saturating_duration_since(t.seen) <= self.config.forget_after);
        if plan.devices.len() != before {
            plan.dirty = true;
        }
    }

    fn solve(&self, plan: &mut Plan, now: Instant) {
        self.forget(plan, now);
        let ids: Vec<String> = plan.devices.keys().cloned().collect();
        let scale = plan.scale;
        let devices: Vec<fleet::FleetDevice> = ids
            .iter()
            .map(|id| {
                let mut d = plan.devices[id].report.device();
                for o in &mut d.options {
                    o.server_ms *= scale;
                }
                d
            })
            .collect();
        plan.solved_at = Some(now);
        plan.dirty = false;
        match fleet::solve(&devices, &self.capacity, self.config.objective) {
            Ok(a) => {
                for (k, id) in ids.iter().enumerate() {
                    let o = &devices[k].options[a.choice[k]];
                    if let Some(t) = plan.devices.get_mut(id) {
                        t.recommendation = Some(fleet::encode_recommendation(o));
                    }
                }
                tracing::debug!(
                    "fleet plan: {} devices, utilization {:.2}, queue {:.1} ms, objective {:.1}, {} moves",
                    devices.len(),
                    a.utilization,
                    a.queue_ms,
                    a.objective,
                    a.moves
                );
                // The prediction in the devices' own units, to compare with what is measured.
                plan.last = Some((a.utilization / scale, a.objective));
            }
            Err(e) => {
                // A report the solver refuses (e.g. no device-only option) leaves that fleet
                // without recommendations; devices then decide alone.
                tracing::warn!("fleet plan failed: {e}");
                for t in plan.devices.values_mut() {
                    t.recommendation = None;
                }
            }
        }
    }

    /// Devices tracked now.
    pub fn devices(&self) -> usize {
        self.inner.lock().expect("coordinator lock").devices.len()
    }

    /// The last solve's predicted utilization and objective.
    pub fn last_solution(&self) -> Option<(f64, f64)> {
        self.inner.lock().expect("coordinator lock").last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_codec::Codec;
    use cleave_plan::fleet::FleetOption;

    fn report(local_ms: f64) -> DeviceReport {
        DeviceReport {
            fps: 10.0,
            options: vec![
                FleetOption { cut: 9, codec: None, latency_ms: local_ms, server_ms: 0.0, energy_j: 0.1 },
                FleetOption { cut: 3, codec: Some(Codec::Int8), latency_ms: 40.0, server_ms: 30.0, energy_j: 0.05 },
            ],
        }
    }

    #[test]
    fn devices_get_recommendations_within_capacity() {
        let c = Coordinator::new(CoordConfig::default(), 1);
        let t0 = Instant::now();
        // 6 devices × 10 fps × 30 ms = 1.8 s/s: at most 2 fit in 0.8 of one worker.
        for i in 0..6 {
            c.visit(&format!("d{i}"), Some(report(100.0 + 50.0 * i as f64)), t0, f64::NAN).unwrap();
        }
        let t1 = t0 + Duration::from_secs(1);
        let recs: Vec<String> =
            (0..6).map(|i| c.visit(&format!("d{i}"), None, t1, f64::NAN).unwrap().unwrap()).collect();
        let sent = recs.iter().filter(|r| r.starts_with("3:")).count();
        assert!((1..=2).contains(&sent), "{recs:?}");
        // The slowest devices are the ones sent.
        assert!(recs[5].starts_with("3:"), "{recs:?}");
        let (u, _) = c.last_solution().unwrap();
        assert!(u <= 0.8 + 1e-9);
    }

    #[test]
    fn unknown_devices_and_bad_ids() {
        let c = Coordinator::new(CoordConfig::default(), 1);
        assert_eq!(c.visit("nobody", None, Instant::now(), f64::NAN).unwrap(), None);
        assert!(c.visit("", None, Instant::now(), f64::NAN).is_err());
        assert!(c.visit(&"x".repeat(MAX_DEVICE_ID + 1), None, Instant::now(), f64::NAN).is_err());
    }

    #[test]
    fn silent_devices_are_forgotten() {
        let c = Coordinator::new(CoordConfig::default(), 1);
        let t0 = Instant::now();
        c.visit("a", Some(report(100.0)), t0, f64::NAN).unwrap();
        c.visit("b", Some(report(100.0)), t0, f64::NAN).unwrap();
        let later = t0 + Duration::from_secs(10);
        c.visit("b", Some(report(100.0)), later, f64::NAN).unwrap();
        assert_eq!(c.devices(), 1);
    }

    #[test]
    fn meter_measures_busy_share() {
        let m = LoadMeter::new(2);
        let t0 = Instant::now();
        for k in 0..8 {
            // 250 ms windows with 250 ms of compute on 2 workers: half busy.
            let t = t0 + LoadMeter::WINDOW * k;
            m.record(Duration::from_millis(250), t);
        }
        let u = m.utilization(t0 + LoadMeter::WINDOW * 8);
        assert!((u - 0.5).abs() < 0.05, "{u}");
        // Idle for a while: decays.
        let u2 = m.utilization(t0 + LoadMeter::WINDOW * 20);
        assert!(u2 < 0.1, "{u2}");
    }
}

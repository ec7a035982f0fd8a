//! Many devices, one edge server: the joint choice of every device's cut and codec (pure).
//!
//! ## The model
//! Device `i` releases `fps_i` frames per second and has a few options `o` (a cut and codec, or
//! device-only; an exit policy is folded into an option's expected figures). Each option has a
//! latency without server queueing `L_i(o)` (head, uplink, RTT, server compute, downlink, as the
//! device's own planner predicts them), a server compute time per frame `s_i(o)` (0 for
//! device-only) and a device energy per frame `E_i(o)`. The server's utilization is
//! `ρ = Σ fps_i · s_i(o_i) / C`, with `C` the server-milliseconds it can compute per second
//! (workers × 1000). A frame that is sent waits in the queue for the expected delay
//! [`expected_wait_ms`]`(ρ, s̄, workers)`, an M/M/1-style `s̄/workers · ρ / (1 − ρ)` with `s̄`
//! the rate-weighted mean service time, so the cost of load is convex and grows without bound
//! near saturation. Utilization above `max_utilization` is infeasible (the capacity constraint).
//!
//! The objective ([`FleetObjective`]) is the devices' mean latency, the largest latency, or the
//! fleet's device power (energy per second), always subject to the capacity constraint.
//!
//! ## The algorithm ([`solve`])
//! 1. **Congestion price (Lagrangian relaxation of the capacity).** For a price `λ ≥ 0` on
//!    server time, every device alone picks `argmin_o cost_i(o) + λ · fps_i · s_i(o)` (ties to
//!    the smaller server time). A device's server use is non-increasing in `λ` (the standard
//!    monotonicity of a minimiser in a linear price), so the fleet's utilization is too; the
//!    smallest price that respects the capacity is found by bisection, and a geometric grid of
//!    prices is scanned as well. Each price's assignment is scored with the true objective,
//!    queueing included, and the best one kept. All-local (`ρ = 0`, always feasible) is a
//!    candidate too.
//! 2. **Local search (best single-device move).** From that assignment, repeatedly apply the one
//!    device change that most improves the true objective, while one does by more than a
//!    relative 1e-9, and only moves that stay within the capacity.
//!
//! ## Why it is sound
//! - **Feasible**: every candidate considered respects `ρ ≤ max_utilization` (all-local does,
//!   and step 2 only takes feasible moves).
//! - **Stops**: step 2 strictly decreases the objective at every move, and the assignments are
//!   finite, so it cannot cycle; it is also capped at `moves_cap` moves (64 per device), and a
//!   capped run still returns the best assignment seen.
//! - **Never worse than** all-local, and than the best price-taking assignment, which includes
//!   what devices pick when each best-responds to one shared price.
//! - **Locally optimal**: when step 2 stops uncapped, no single device can change its option and
//!   improve the fleet's objective (checked by the property tests).
//! - **Bound of step 1** (without the queueing term): at the price `λ*` where utilization crosses
//!   the capacity, the assignment is optimal for the capacity it uses (Everett's theorem), and
//!   since each device contributes one term, the gap to the constrained optimum is at most one
//!   device's largest difference between its options; step 2 then only improves.
//!
//! Cost: a price's assignment is one pass over devices × options; with 64 devices and 6 options
//! the whole solve takes well under a millisecond.

use cleave_codec::Codec;
use serde::{Deserialize, Serialize};

use crate::search::Plan;

/// What the fleet minimises, subject to the server's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FleetObjective {
    /// The mean over devices of each device's expected frame latency.
    #[default]
    MeanLatency,
    /// The largest device's expected frame latency.
    MaxLatency,
    /// The fleet's device power: Σ fps × energy per frame.
    Energy,
}

impl std::str::FromStr for FleetObjective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean-latency" | "mean" => Ok(FleetObjective::MeanLatency),
            "max-latency" | "max" => Ok(FleetObjective::MaxLatency),
            "energy" => Ok(FleetObjective::Energy),
            _ => Err(format!("unknown fleet objective `{s}` (mean-latency, max-latency or energy)")),
        }
    }
}

impl std::fmt::Display for FleetObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FleetObjective::MeanLatency => "mean-latency",
            FleetObjective::MaxLatency => "max-latency",
            FleetObjective::Energy => "energy",
        })
    }
}

/// One way a device may run a frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FleetOption {
    /// The cut (the model's last cut: device-only).
    pub cut: usize,
    /// The codec of the boundary; `None` for device-only.
    pub codec: Option<Codec>,
    /// Expected frame latency without waiting in the server's queue, ms.
    pub latency_ms: f64,
    /// Server compute per frame at batch 1, ms (0: nothing is sent).
    pub server_ms: f64,
    /// Device energy per frame, J.
    pub energy_j: f64,
}

impl FleetOption {
    /// Whether this option uses the server.
    pub fn offloads(&self) -> bool {
        self.server_ms > 0.0 || self.codec.is_some()
    }

    /// The option a two-tier [`Plan`] describes (its expected figures, queueing excluded: plan
    /// with `server_queue_ms = 0`).
    pub fn from_plan(plan: &Plan) -> FleetOption {
        let p = &plan.predicted;
        let sent = 1.0 - p.exit_rate;
        let codec = plan.codecs.first().copied();
        FleetOption {
            cut: plan.cuts[0],
            codec,
            latency_ms: p.total_ms - sent * p.server_queue_ms,
            server_ms: if codec.is_some() { sent * p.server_ms } else { 0.0 },
            energy_j: p.energy_j,
        }
    }
}

/// One device as the solver sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDevice {
    /// Frames per second it releases.
    pub fps: f64,
    /// Its options; at least one must not offload (device-only), so that all-local is feasible.
    pub options: Vec<FleetOption>,
}

/// The server's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Compute workers (batches computed at once).
    pub workers: usize,
    /// Largest utilization allowed, in (0, 1).
    pub max_utilization: f64,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity { workers: 1, max_utilization: 0.8 }
    }
}

impl Capacity {
    /// Server-milliseconds of compute per second.
    pub fn ms_per_s(&self) -> f64 {
        self.workers.max(1) as f64 * 1000.0
    }
}

/// Expected wait in the server's queue at utilization `rho`, for requests of mean service time
/// `mean_service_ms` spread over `workers`: `s̄/workers · ρ/(1 − ρ)` (M/M/1 on the pooled
/// workers), infinite at or past saturation.
pub fn expected_wait_ms(rho: f64, mean_service_ms: f64, workers: usize) -> f64 {
    if !(rho.is_finite()) || rho >= 1.0 {
        return f64::INFINITY;
    }
    let rho = rho.max(0.0);
    mean_service_ms.max(0.0) / workers.max(1) as f64 * rho / (1.0 - rho)
}

/// The solver's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Per device, the index of its chosen option.
    pub choice: Vec<usize>,
    /// Predicted server utilization.
    pub utilization: f64,
    /// Predicted queue wait of a sent frame, ms.
    pub queue_ms: f64,
    /// Per device, its predicted latency (queue included), ms.
    pub latency_ms: Vec<f64>,
    /// The objective's value.
    pub objective: f64,
    /// The congestion price of the starting point (ms of cost per server-ms per second).
    pub price: f64,
    /// Moves made by the local search.
    pub moves: usize,
}

/// Why the fleet cannot be planned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FleetError {
    #[error("device {0} has no device-only option (all-local must be feasible)")]
    NoLocalOption(usize),
    #[error("device {device}: {what}")]
    Invalid { device: usize, what: String },
    #[error("capacity: {0}")]
    Capacity(String),
}

/// Aggregates of an assignment, updated per move in O(1).
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    /// Σ fps · s (server-ms per second).
    server_rate: f64,
    /// Σ fps over offloading devices.
    sent_fps: f64,
}

impl Load {
    fn add(&mut self, d: &FleetDevice, o: &FleetOption, sign: f64) {
        if o.offloads() {
            self.server_rate += sign * d.fps * o.server_ms;
            self.sent_fps += sign * d.fps;
        }
    }

    fn rho(&self, cap: &Capacity) -> f64 {
        (self.server_rate / cap.ms_per_s()).max(0.0)
    }

    fn wait(&self, cap: &Capacity) -> f64 {
        if self.sent_fps <= 1e-12 {
            return 0.0;
        }
        expected_wait_ms(self.rho(cap), self.server_rate / self.sent_fps, cap.workers)
    }
}

fn check(devices: &[FleetDevice], cap: &Capacity) -> Result<(), FleetError> {
    if !(cap.max_utilization > 0.0 && cap.max_utilization < 1.0) {
        return Err(FleetError::Capacity(format!("max utilization {} must be in (0, 1)", cap.max_utilization)));
    }
    for (i, d) in devices.iter().enumerate() {
        if !(d.fps.is_finite() && d.fps >= 0.0) {
            return Err(FleetError::Invalid { device: i, what: format!("fps {} must be finite and ≥ 0", d.fps) });
        }
        for o in &d.options {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !(ok(o.latency_ms) && ok(o.server_ms) && ok(o.energy_j)) {
                return Err(FleetError::Invalid {
                    device: i,
                    what: format!("option at cut {} has bad figures", o.cut),
                });
            }
        }
        if !d.options.iter().any(|o| !o.offloads()) {
            return Err(FleetError::NoLocalOption(i));
        }
    }
    Ok(())
}

/// A device's own cost of an option, without queueing (what the price is added to).
fn own_cost(obj: FleetObjective, d: &FleetDevice, o: &FleetOption) -> f64 {
    match obj {
        FleetObjective::MeanLatency | FleetObjective::MaxLatency => o.latency_ms,
        FleetObjective::Energy => d.fps * o.energy_j,
    }
}

/// The objective of `choice`, with its aggregates; infinite when over capacity.
fn score(devices: &[FleetDevice], choice: &[usize], cap: &Capacity, obj: FleetObjective) -> (f64, Load) {
    let mut load = Load::default();
    for (d, &c) in devices.iter().zip(choice) {
        load.add(d, &d.options[c], 1.0);
    }
    (objective_with(devices, choice, cap, obj, &load, None), load)
}

/// The objective given aggregates `load`, with device `swap.0` moved to option `swap.1`.
fn objective_with(
    devices: &[FleetDevice],
    choice: &[usize],
    cap: &Capacity,
    obj: FleetObjective,
    load: &Load,
    swap: Option<(usize, usize)>,
) -> f64 {
    if load.rho(cap) > cap.max_utilization + 1e-12 {
        return f64::INFINITY;
    }
    let wait = load.wait(cap);
    let opt = |i: usize| {
        let c = match swap {
            Some((j, c)) if j == i => c,
            _ => choice[i],
        };
        &devices[i].options[c]
    };
    let lat = |i: usize| {
        let o = opt(i);
        o.latency_ms + if o.offloads() { wait } else { 0.0 }
    };
    match obj {
        FleetObjective::MeanLatency => (0..devices.len()).map(lat).sum::<f64>() / devices.len().max(1) as f64,
        FleetObjective::MaxLatency => (0..devices.len()).map(lat).fold(0.0, f64::max),
        FleetObjective::Energy => (0..devices.len()).map(|i| devices[i].fps * opt(i).energy_j).sum(),
    }
}

/// Every device's best option at congestion price `price` (ties: less server time, then index).
fn at_price(devices: &[FleetDevice], obj: FleetObjective, price: f64) -> Vec<usize> {
    devices
        .iter()
        .map(|d| {
            (0..d.options.len())
                .min_by(|&a, &b| {
                    let v = |k: usize| {
                        let o = &d.options[k];
                        own_cost(obj, d, o) + price * d.fps * o.server_ms
                    };
                    v(a).total_cmp(&v(b))
                        .then(d.options[a].server_ms.total_cmp(&d.options[b].server_ms))
                        .then(a.cmp(&b))
                })
                .unwrap_or(0)
        })
        .collect()
}

/// The all-local assignment: each device's fastest (or, for energy, cheapest) device-only option.
fn all_local(devices: &[FleetDevice], obj: FleetObjective) -> Vec<usize> {
    devices
        .iter()
        .map(|d| {
            (0..d.options.len())
                .filter(|&k| !d.options[k].offloads())
                .min_by(|&a, &b| own_cost(obj, d, &d.options[a]).total_cmp(&own_cost(obj, d, &d.options[b])))
                .unwrap_or(0)
        })
        .collect()
}

/// Solves the joint assignment (see the module docs). Deterministic.
pub fn solve(devices: &[FleetDevice], cap: &Capacity, obj: FleetObjective) -> Result<Assignment, FleetError> {
    check(devices, cap)?;
    let n = devices.len();
    // Step 1: candidates from congestion prices.
    let mut best = all_local(devices, obj);
    let (mut best_v, _) = score(devices, &best, cap, obj);
    let mut best_price = f64::INFINITY;
    let mut consider = |choice: Vec<usize>, price: f64, best: &mut Vec<usize>, best_v: &mut f64| {
        let (v, _) = score(devices, &choice, cap, obj);
        if v < *best_v {
            *best_v = v;
            *best = choice;
            best_price = price;
        }
    };
    // A geometric grid, from free to prohibitive (a server-ms per second never costs more than
    // 1e6 ms of latency).
    let mut price = 0.0;
    consider(at_price(devices, obj, 0.0), 0.0, &mut best, &mut best_v);
    let mut p = 1e-6;
    while p <= 1e6 {
        consider(at_price(devices, obj, p), p, &mut best, &mut best_v);
        p *= 2.0;
    }
    // Bisection for the smallest price within the capacity.
    let rho_at = |p: f64| score(devices, &at_price(devices, obj, p), cap, obj).1.rho(cap);
    if rho_at(0.0) > cap.max_utilization {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while rho_at(hi) > cap.max_utilization && hi < 1e9 {
            hi *= 4.0;
        }
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if rho_at(mid) > cap.max_utilization {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        price = hi;
        consider(at_price(devices, obj, hi), hi, &mut best, &mut best_v);
    }
    if !best_price.is_finite() {
        best_price = price;
    }

    // Step 2: best single-device moves while one improves.
    let (mut cur_v, mut load) = score(devices, &best, cap, obj);
    let moves_cap = 64 * n.max(1);
    let mut moves = 0;
    while moves < moves_cap {
        let mut found: Option<(usize, usize, f64)> = None;
        for i in 0..n {
            let d = &devices[i];
            for k in 0..d.options.len() {
                if k == best[i] {
                    continue;
                }
                let mut l = load;
                l.add(d, &d.options[best[i]], -1.0);
                l.add(d, &d.options[k], 1.0);
                let v = objective_with(devices, &best, cap, obj, &l, Some((i, k)));
                if v < cur_v - 1e-9 * cur_v.abs().max(1.0) && found.is_none_or(|(_, _, fv)| v < fv) {
                    found = Some((i, k, v));
                }
            }
        }
        let Some((i, k, v)) = found else { break };
        let d = &devices[i];
        load.add(d, &d.options[best[i]], -1.0);
        load.add(d, &d.options[k], 1.0);
        best[i] = k;
        cur_v = v;
        moves += 1;
    }
    // Recompute from scratch (no drift from the incremental sums).
    let (objective, load) = score(devices, &best, cap, obj);
    let wait = load.wait(cap);
    let latency_ms = devices
        .iter()
        .zip(&best)
        .map(|(d, &c)| {
            let o = &d.options[c];
            o.latency_ms + if o.offloads() { wait } else { 0.0 }
        })
        .collect();
    Ok(Assignment {
        choice: best,
        utilization: load.rho(cap),
        queue_ms: wait,
        latency_ms,
        objective,
        price: best_price,
        moves,
    })
}

/// One device alone (no coordination): its best option given the server's reported utilization
/// `observed_util` (which includes this device's current load, `current`), with the queue wait
/// predicted as a function of the load it would add or remove ([`expected_wait_ms`] at the
/// utilization without it plus its option's share). `mean_service_ms` is the server's typical
/// request time (e.g. the reported compute time); `None` uses the option's own.
pub fn best_response(
    device: &FleetDevice,
    current: Option<usize>,
    observed_util: f64,
    mean_service_ms: Option<f64>,
    cap: &Capacity,
) -> Option<usize> {
    let own = |k: usize| {
        let o = &device.options[k];
        if o.offloads() { device.fps * o.server_ms / cap.ms_per_s() } else { 0.0 }
    };
    let others = (observed_util.max(0.0) - current.map_or(0.0, own)).max(0.0);
    (0..device.options.len()).min_by(|&a, &b| {
        let v = |k: usize| {
            let o = &device.options[k];
            if !o.offloads() {
                return o.latency_ms;
            }
            let rho = others + own(k);
            let s = mean_service_ms.unwrap_or(o.server_ms).max(o.server_ms.min(mean_service_ms.unwrap_or(f64::MAX)));
            o.latency_ms + expected_wait_ms(rho.min(0.99), s, cap.workers)
        };
        v(a).total_cmp(&v(b)).then(a.cmp(&b))
    })
}

/// A device's report to a coordinating server, in a compact text form for a request parameter:
/// `f=FPS;o=CUT:CODEC:LAT_MS:SRV_MS:ENERGY_MJ,…` (codec `-` for device-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub fps: f64,
    pub options: Vec<FleetOption>,
}

/// Most options a report may carry.
pub const MAX_REPORT_OPTIONS: usize = 32;

impl DeviceReport {
    /// The text form.
    pub fn encode(&self) -> String {
        let opts: Vec<String> = self
            .options
            .iter()
            .map(|o| {
                format!(
                    "{}:{}:{:.2}:{:.2}:{:.2}",
                    o.cut,
                    o.codec.map_or("-", |c| c.name()),
                    o.latency_ms,
                    o.server_ms,
                    o.energy_j * 1e3
                )
            })
            .collect();
        format!("f={:.3};o={}", self.fps, opts.join(","))
    }

    /// Parses the text form; errors say what is wrong.
    pub fn parse(s: &str) -> Result<DeviceReport, String> {
        let mut fps = None;
        let mut options = None;
        for part in s.split(';') {
            match part.split_once('=') {
                Some(("f", v)) => fps = Some(num(v, "f")?),
                Some(("o", v)) => {
                    let mut out = vec![];
                    for (i, o) in v.split(',').enumerate() {
                        if i >= MAX_REPORT_OPTIONS {
                            return Err(format!("more than {MAX_REPORT_OPTIONS} options"));
                        }
                        let f: Vec<&str> = o.split(':').collect();
                        if f.len() != 5 {
                            return Err(format!("option `{o}` is not CUT:CODEC:LAT:SRV:MJ"));
                        }
                        let cut = f[0].parse::<usize>().map_err(|_| format!("bad cut `{}`", f[0]))?;
                        let codec = match f[1] {
                            "-" => None,
                            c => Some(c.parse::<Codec>().map_err(|e| format!("codec `{c}`: {e}"))?),
                        };
                        out.push(FleetOption {
                            cut,
                            codec,
                            latency_ms: num(f[2], "latency")?,
                            server_ms: num(f[3], "server time")?,
                            energy_j: num(f[4], "energy")? / 1e3,
                        });
                    }
                    options = Some(out);
                }
                _ => return Err(format!("unknown field `{part}`")),
            }
        }
        let fps = fps.ok_or("missing f=")?;
        let options = options.ok_or("missing o=")?;
        if !(fps.is_finite() && fps >= 0.0) {
            return Err(format!("fps {fps} is not finite and ≥ 0"));
        }
        Ok(DeviceReport { fps, options })
    }

    /// Whether `other` differs enough to be worth sending again: another option set, the fps
    /// or any figure off by more than `rel` (relative).
    pub fn differs(&self, other: &DeviceReport, rel: f64) -> bool {
        let off = |a: f64, b: f64| (a - b).abs() > rel * a.abs().max(b.abs()).max(1e-9);
        self.options.len() != other.options.len()
            || off(self.fps, other.fps)
            || self.options.iter().zip(&other.options).any(|(a, b)| {
                a.cut != b.cut
                    || a.codec != b.codec
                    || off(a.latency_ms, b.latency_ms)
                    || off(a.server_ms, b.server_ms)
                    || off(a.energy_j, b.energy_j)
            })
    }

    /// The solver's view of this device.
    pub fn device(&self) -> FleetDevice {
        FleetDevice { fps: self.fps, options: self.options.clone() }
    }
}

fn num(v: &str, what: &str) -> Result<f64, String> {
    let x: f64 = v.parse().map_err(|_| format!("{what} `{v}` is not a number"))?;
    if x.is_finite() && x >= 0.0 { Ok(x) } else { Err(format!("{what} `{v}` must be finite and ≥ 0")) }
}

/// A recommendation's text form: `CUT:CODEC` (codec `-` for device-only).
pub fn encode_recommendation(o: &FleetOption) -> String {
    format!("{}:{}", o.cut, o.codec.map_or("-", |c| c.name()))
}

/// Parses a recommendation: the cut and the codec (`None`: device-only).
pub fn parse_recommendation(s: &str) -> Result<(usize, Option<Codec>), String> {
    let (c, q) = s.split_once(':').ok_or_else(|| format!("recommendation `{s}` is not CUT:CODEC"))?;
    let cut = c.parse().map_err(|_| format!("bad cut `{c}`"))?;
    let codec = match q {
        "-" => None,
        q => Some(q.parse::<Codec>().map_err(|e| format!("codec `{q}`: {e}"))?),
    };
    Ok((cut, codec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn local(lat: f64) -> FleetOption {
        FleetOption { cut: 9, codec: None, latency_ms: lat, server_ms: 0.0, energy_j: lat * 3e-3 }
    }
    fn off(cut: usize, lat: f64, srv: f64) -> FleetOption {
        FleetOption { cut, codec: Some(Codec::Int8), latency_ms: lat, server_ms: srv, energy_j: 0.01 }
    }
    fn dev(fps: f64, options: Vec<FleetOption>) -> FleetDevice {
        FleetDevice { fps, options }
    }

    #[test]
    fn wait_grows_without_bound() {
        assert_eq!(expected_wait_ms(0.0, 10.0, 1), 0.0);
        assert!((expected_wait_ms(0.5, 10.0, 1) - 10.0).abs() < 1e-9);
        assert!((expected_wait_ms(0.5, 10.0, 2) - 5.0).abs() < 1e-9);
        assert!(expected_wait_ms(1.0, 10.0, 1).is_infinite());
    }

    #[test]
    fn idle_server_takes_everyone() {
        let devices: Vec<_> = (0..4).map(|_| dev(1.0, vec![local(100.0), off(3, 30.0, 5.0)])).collect();
        let a = solve(&devices, &Capacity::default(), FleetObjective::MeanLatency).unwrap();
        assert!(a.choice.iter().all(|&c| c == 1), "{a:?}");
        assert!(a.utilization < 0.03);
    }

    #[test]
    fn capacity_is_respected_and_the_best_gainers_offload() {
        // 10 devices at 10 fps, 20 ms of server each: all offloading needs 2 s/s on 1 worker.
        // Devices with a larger gain (slower locally) should get the server first.
        let devices: Vec<_> =
            (0..10).map(|i| dev(10.0, vec![local(60.0 + 20.0 * i as f64), off(3, 40.0, 20.0)])).collect();
        let cap = Capacity { workers: 1, max_utilization: 0.8 };
        let a = solve(&devices, &cap, FleetObjective::MeanLatency).unwrap();
        assert!(a.utilization <= 0.8 + 1e-9, "{a:?}");
        let sent: Vec<usize> = (0..10).filter(|&i| a.choice[i] == 1).collect();
        assert!(!sent.is_empty() && sent.len() <= 4, "{a:?}");
        // Whoever offloads gains at least as much as whoever does not.
        let gain = |i: usize| devices[i].options[0].latency_ms - devices[i].options[1].latency_ms;
        let min_sent = sent.iter().map(|&i| gain(i)).fold(f64::MAX, f64::min);
        let max_kept = (0..10).filter(|i| !sent.contains(i)).map(gain).fold(f64::MIN, f64::max);
        assert!(min_sent >= max_kept, "{a:?}");
    }

    #[test]
    fn a_split_shares_the_server() {
        // A mid cut costs half the server time of offloading everything: under contention the
        // solver moves devices to it.
        let devices: Vec<_> =
            (0..20).map(|_| dev(10.0, vec![local(150.0), off(0, 40.0, 20.0), off(5, 70.0, 8.0)])).collect();
        let cap = Capacity { workers: 1, max_utilization: 0.85 };
        let a = solve(&devices, &cap, FleetObjective::MeanLatency).unwrap();
        assert!(a.choice.contains(&2), "{a:?}");
        assert!(a.utilization <= 0.85 + 1e-9);
    }

    #[test]
    fn max_latency_protects_the_slowest() {
        let mut devices: Vec<_> = (0..6).map(|_| dev(10.0, vec![local(80.0), off(3, 40.0, 30.0)])).collect();
        devices.push(dev(10.0, vec![local(400.0), off(3, 60.0, 30.0)]));
        let cap = Capacity { workers: 1, max_utilization: 0.5 };
        let a = solve(&devices, &cap, FleetObjective::MaxLatency).unwrap();
        assert_eq!(a.choice[6], 1, "{a:?}");
    }

    #[test]
    fn energy_objective_prefers_cheap_options() {
        let d = dev(
            5.0,
            vec![FleetOption { energy_j: 0.3, ..local(100.0) }, FleetOption { energy_j: 0.05, ..off(2, 120.0, 10.0) }],
        );
        let a = solve(&[d], &Capacity::default(), FleetObjective::Energy).unwrap();
        assert_eq!(a.choice, vec![1]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(
            solve(&[dev(1.0, vec![off(0, 1.0, 1.0)])], &Capacity::default(), FleetObjective::MeanLatency),
            Err(FleetError::NoLocalOption(0))
        );
        let bad = Capacity { workers: 1, max_utilization: 1.5 };
        assert!(solve(&[], &bad, FleetObjective::MeanLatency).is_err());
        let nan = dev(f64::NAN, vec![local(1.0)]);
        assert!(solve(&[nan], &Capacity::default(), FleetObjective::MeanLatency).is_err());
        assert!(solve(&[], &Capacity::default(), FleetObjective::MeanLatency).is_ok());
    }

    #[test]
    fn best_response_backs_off_a_busy_server() {
        let d = dev(10.0, vec![local(100.0), off(3, 40.0, 10.0)]);
        let cap = Capacity { workers: 1, max_utilization: 0.8 };
        assert_eq!(best_response(&d, None, 0.1, None, &cap), Some(1));
        // At 97 % busy (this device not among the senders) the queue costs more than the gain.
        assert_eq!(best_response(&d, Some(0), 0.97, None, &cap), Some(0));
        // Its own load is taken out of what it observed.
        assert_eq!(best_response(&d, Some(1), 0.3, None, &cap), Some(1));
    }

    #[test]
    fn reports_round_trip_and_reject_garbage() {
        let r = DeviceReport { fps: 10.0, options: vec![local(90.5), off(4, 33.25, 7.5)] };
        let s = r.encode();
        let back = DeviceReport::parse(&s).unwrap();
        assert!(!r.differs(&back, 1e-3), "{s} → {back:?}");
        assert!(s.len() < 80, "{s}");
        for bad in
            ["", "f=1", "o=1:-:1:0:0", "f=x;o=1:-:1:0:0", "f=1;o=1:-:1:0", "f=1;o=1:zz:1:0:0", "f=1;o=1:-:-1:0:0"]
        {
            assert!(DeviceReport::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_recommendation("4:int8").unwrap(), (4, Some(Codec::Int8)));
        assert_eq!(parse_recommendation("9:-").unwrap(), (9, None));
        assert_eq!(parse_recommendation(&encode_recommendation(&off(4, 1.0, 1.0))).unwrap(), (4, Some(Codec::Int8)));
        assert!(parse_recommendation("x").is_err());
    }

    fn fleet() -> impl Strategy<Value = Vec<FleetDevice>> {
        let option = (0usize..6, 1.0f64..300.0, 0.0f64..40.0).prop_map(|(cut, lat, srv)| off(cut, lat, srv.max(0.1)));
        let device =
            (0.5f64..20.0, 10.0f64..400.0, proptest::collection::vec(option, 0..4)).prop_map(|(fps, l, mut opts)| {
                opts.insert(0, local(l));
                dev(fps, opts)
            });
        proptest::collection::vec(device, 0..12)
    }

    fn brute(devices: &[FleetDevice], cap: &Capacity, obj: FleetObjective) -> f64 {
        let mut choice = vec![0; devices.len()];
        let mut best = f64::INFINITY;
        loop {
            best = best.min(score(devices, &choice, cap, obj).0);
            let mut i = 0;
            loop {
                if i == devices.len() {
                    return best;
                }
                choice[i] += 1;
                if choice[i] < devices[i].options.len() {
                    break;
                }
                choice[i] = 0;
                i += 1;
            }
        }
    }

    proptest! {
        #[test]
        fn solutions_are_feasible_locally_optimal_and_beat_all_local(
            devices in fleet(),
            workers in 1usize..3,
            max_u in 0.3f64..0.95,
            obj in prop_oneof![Just(FleetObjective::MeanLatency), Just(FleetObjective::MaxLatency), Just(FleetObjective::Energy)],
        ) {
            let cap = Capacity { workers, max_utilization: max_u };
            let a = solve(&devices, &cap, obj).unwrap();
            prop_assert!(a.utilization <= max_u + 1e-9);
            prop_assert!(a.objective.is_finite());
            let (local_v, _) = score(&devices, &all_local(&devices, obj), &cap, obj);
            prop_assert!(a.objective <= local_v + 1e-9);
            // No single device move improves (the local search stopped uncapped).
            if a.moves < 64 * devices.len().max(1) {
                for i in 0..devices.len() {
                    for k in 0..devices[i].options.len() {
                        let mut c = a.choice.clone();
                        c[i] = k;
                        let (v, _) = score(&devices, &c, &cap, obj);
                        prop_assert!(v >= a.objective - 1e-6 * a.objective.abs().max(1.0), "device {} option {} gives {} < {}", i, k, v, a.objective);
                    }
                }
            }
        }

        #[test]
        fn small_fleets_are_close_to_the_optimum(devices in proptest::collection::vec(
            (0.5f64..20.0, 10.0f64..400.0, 1.0f64..300.0, 0.1f64..40.0).prop_map(|(fps, l, lo, s)| dev(fps, vec![local(l), off(1, lo, s)])),
            0..7,
        )) {
            let cap = Capacity { workers: 1, max_utilization: 0.8 };
            let a = solve(&devices, &cap, FleetObjective::MeanLatency).unwrap();
            let opt = brute(&devices, &cap, FleetObjective::MeanLatency);
            // Not exact in general, but never far from it on two-option fleets.
            prop_assert!(a.objective <= opt * 1.25 + 1e-9, "{} vs optimum {}", a.objective, opt);
        }
    }
}

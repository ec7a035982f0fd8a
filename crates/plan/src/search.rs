//! Exact search over cut(s) × codec(s) × exit policy.
//!
//! Every candidate is scored by one function, [`evaluate`]. The fast search exploits the
//! objective's structure; [`brute_force`] enumerates everything and is the reference the
//! property tests compare against.
//!
//! **Two tiers.** The objective is linear in the exit policy's rate: with an exit answering a
//! fraction `r` of frames, `E[obj] = r · obj(exit) + (1 − r) · obj(sent)`. For each exit policy
//! (and none) the search therefore needs only the best (cut, codec) among those that respect the
//! policy's position (the exit must be in the head) and the accuracy budget left after the
//! policy's own loss. That is one pass over cuts × codecs per policy.
//!
//! **Three tiers.** With cuts `c1 < c2`, the objective splits into a device-side term of
//! `(c1, q1)` and a server-side term of `(c2, q2)`, coupled only by `c1 < c2` and the accuracy
//! budget `drop(c1, q1) + drop(c2, q2) ≤ budget`. Sweeping `c2` upwards while inserting the
//! `(c1 = c2 − 1, q1)` terms into a Pareto front of (accuracy loss, value) answers each
//! `(c2, q2)` with one binary search.

use cleave_codec::Codec;
use serde::{Deserialize, Serialize};

use crate::problem::{Conditions, Objective, Problem};

/// Tolerance for accuracy-budget comparisons.
const EPS: f64 = 1e-12;

/// Whether an accuracy loss fits a budget (an infinite loss never does).
#[inline]
fn fits(loss: f64, budget: f64) -> bool {
    loss.is_finite() && loss <= budget + EPS
}

/// A choice, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Choice {
    /// The first cut (device side). `last` means device-only.
    pub cut: usize,
    /// Codec index for the first boundary (ignored for device-only).
    pub codec: usize,
    /// Three tiers: the second cut and its codec. `None`, or a cut equal to `last`, means the
    /// edge runs the whole tail.
    pub second: Option<(usize, usize)>,
    /// Exit policy index, if any.
    pub exit: Option<usize>,
}

/// Predicted costs of a plan. Times in ms, bytes, energy in J. The breakdown fields describe a
/// frame that is sent (does not exit); `total_ms`, `bytes_up` and `energy_j` are expectations
/// over the exit policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub device_ms: f64,
    pub rtt_ms: f64,
    pub uplink_ms: f64,
    pub server_queue_ms: f64,
    pub server_ms: f64,
    pub uplink2_ms: f64,
    pub cloud_queue_ms: f64,
    pub cloud_ms: f64,
    pub downlink_ms: f64,
    /// Latency of a frame that is sent.
    pub sent_total_ms: f64,
    /// Fraction of frames answered at the exit.
    pub exit_rate: f64,
    /// Latency of a frame that exits.
    pub exit_ms: f64,
    /// Expected end-to-end latency.
    pub total_ms: f64,
    /// Expected payload bytes sent by the device.
    pub bytes_up: f64,
    /// Payload bytes of the answer, for a frame that is sent.
    pub bytes_down: u64,
    /// Expected device energy.
    pub energy_j: f64,
    /// Accuracy lost (0..1): codecs plus exit policy.
    pub accuracy_drop: f64,
}

/// The planner's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Cut indices: `[c]` for two tiers, `[c1, c2]` for three. `[last]` is device-only.
    pub cuts: Vec<usize>,
    /// The codec of each boundary that is sent (empty for device-only).
    pub codecs: Vec<Codec>,
    /// The exit policy's exit, if any.
    pub exit: Option<String>,
    /// Its confidence threshold.
    pub exit_threshold: Option<f64>,
    pub predicted: Prediction,
    /// The objective's value (lower is better).
    pub objective: f64,
    /// The same choice by index.
    pub choice: Choice,
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "infeasible: the device memory cap of {cap} bytes is below every head the other constraints allow (the smallest, at cut {cut}, needs {needed} bytes)"
    )]
    Memory { cap: u64, cut: usize, needed: u64 },
    #[error(
        "infeasible: the accuracy budget of {budget_pct:.2}% is tighter than every allowed choice (the least lossy, {codec} at cut {cut}, loses {best_pct:.2}%), and running everything on the device, which loses nothing, needs {device_only_bytes} bytes of weights, above the memory cap"
    )]
    Accuracy { budget_pct: f64, best_pct: f64, codec: String, cut: usize, device_only_bytes: u64 },
    #[error(
        "infeasible: no codec is allowed at any cut the other constraints leave (cuts {from}..={to}), and the device cannot run the whole model within its memory cap"
    )]
    NoCodec { from: usize, to: usize },
    #[error("invalid planning problem: {0}")]
    Invalid(String),
}

struct Ctx<'a> {
    p: &'a Problem,
    cond: &'a Conditions,
    last: usize,
    lo: usize,
    hi: usize,
    budget: f64,
}

impl<'a> Ctx<'a> {
    fn three_tier(&self) -> bool {
        self.p.cloud_ms.is_some() && self.cond.link2.is_some()
    }

    /// Objective of a sent frame at (c, q) in two tiers (server = edge): (latency, energy).
    #[inline]
    fn sent_two_tier(&self, c: usize, q: usize) -> (f64, f64) {
        let p = self.p;
        let l = &self.cond.link;
        let b = p.bytes[c][q];
        let dev = p.device_ms[c];
        let lat = dev
            + l.rtt_ms
            + l.up_ms(b)
            + self.cond.server_queue_ms
            + (p.server_ms[self.last] - p.server_ms[c])
            + l.down_ms(p.output_bytes);
        let e = &p.energy;
        let energy = e.compute_j(dev)
            + e.send_j(l.wire_bytes(b), l.up_bps)
            + e.receive_j(l.wire_bytes(p.output_bytes), l.down_bps)
            + e.wait_j(lat - dev);
        (lat, energy)
    }

    /// Device-only: (latency, energy).
    #[inline]
    fn device_only(&self) -> (f64, f64) {
        let dev = self.p.device_ms[self.last];
        (dev, self.p.energy.compute_j(dev))
    }

    /// Exit `e` taken: (latency, energy).
    #[inline]
    fn exited(&self, e: usize) -> (f64, f64) {
        let dev = self.p.device_ms[self.p.exits[e].cut];
        (dev, self.p.energy.compute_j(dev))
    }

    fn obj(&self, (lat, en): (f64, f64)) -> f64 {
        self.p.objective.value(lat, en)
    }

    /// Three tiers, c1 < c2 < last: the device-side term of (c1, q1), as (latency, energy)
    /// pieces that add up with [`Ctx::server_side`].
    #[inline]
    fn device_side(&self, c1: usize, q1: usize) -> (f64, f64) {
        let p = self.p;
        let l = &self.cond.link;
        let b = p.bytes[c1][q1];
        let dev = p.device_ms[c1];
        let lat = dev + l.rtt_ms + l.up_ms(b) + self.cond.server_queue_ms - p.server_ms[c1];
        let e = &p.energy;
        (lat, e.compute_j(dev) + e.send_j(l.wire_bytes(b), l.up_bps) + e.wait_j(lat - dev))
    }

    #[inline]
    fn server_side(&self, c2: usize, q2: usize) -> (f64, f64) {
        let p = self.p;
        let l = &self.cond.link;
        let l2 = self.cond.link2.as_ref().expect("three tiers have a second link");
        let cloud = p.cloud_ms.as_ref().expect("three tiers have a cloud profile");
        let b = p.bytes[c2][q2];
        let lat = p.server_ms[c2]
            + l2.rtt_ms
            + l2.up_ms(b)
            + self.cond.cloud_queue_ms
            + (cloud[self.last] - cloud[c2])
            + l2.down_ms(p.output_bytes)
            + l.down_ms(p.output_bytes);
        let e = &p.energy;
        (lat, e.receive_j(l.wire_bytes(p.output_bytes), l.down_bps) + e.wait_j(lat))
    }

    /// Exit options: `None` first, then every exit, each with its earliest cut and budget left.
    fn options(&self) -> impl Iterator<Item = (Option<usize>, usize, f64, f64)> + '_ {
        std::iter::once((None, self.lo, self.budget, 0.0)).chain(
            self.p.exits.iter().enumerate().map(|(i, e)| (Some(i), self.lo.max(e.cut), self.budget - e.drop, e.rate)),
        )
    }

    fn search3(&self, first: Option<usize>) -> Option<Choice> {
        let (lo, hi) = match first {
            Some(c) if c >= self.lo && c <= self.hi => (c, c),
            Some(_) => return None,
            None => (self.lo, self.hi),
        };
        let nq = self.p.codecs.len();
        let last = self.last;
        let mut best: Option<(f64, Choice)> = None;
        for (exit, c_lo, budget, rate) in self.options() {
            if budget < -EPS {
                continue;
            }
            let c_lo = c_lo.max(lo);
            if c_lo > hi {
                continue;
            }
            let mut best_sent: Option<(f64, Choice)> = None;
            let mut consider = |v: f64, ch: Choice| {
                if best_sent.as_ref().is_none_or(|(b, _)| v < *b) {
                    best_sent = Some((v, ch));
                }
            };
            // Device only.
            if hi == last {
                consider(self.obj(self.device_only()), Choice { cut: last, codec: 0, second: None, exit });
            }
            // The edge runs the whole tail.
            for c1 in c_lo..=hi.min(last.saturating_sub(1)) {
                if c_lo >= last {
                    break;
                }
                for q1 in 0..nq {
                    if fits(self.p.drop[c1][q1], budget) {
                        consider(
                            self.obj(self.sent_two_tier(c1, q1)),
                            Choice { cut: c1, codec: q1, second: None, exit },
                        );
                    }
                }
            }
            // Device → edge → cloud, c1 < c2 < last.
            let mut front = Front::default();
            for c2 in (c_lo + 1)..last {
                let c1 = c2 - 1;
                if c1 >= c_lo && c1 <= hi {
                    for q1 in 0..nq {
                        let d = self.p.drop[c1][q1];
                        if fits(d, budget) {
                            front.insert(d, self.obj(self.device_side(c1, q1)), c1, q1);
                        }
                    }
                }
                if front.is_empty() {
                    continue;
                }
                for q2 in 0..nq {
                    let left = budget - self.p.drop[c2][q2];
                    if !fits(self.p.drop[c2][q2], budget) || left < -EPS {
                        continue;
                    }
                    if let Some(&(_, v1, c1, q1)) = front.query(left + EPS) {
                        let v = v1 + self.obj(self.server_side(c2, q2));
                        consider(v, Choice { cut: c1, codec: q1, second: Some((c2, q2)), exit });
                    }
                }
            }
            let Some((v, ch)) = best_sent else { continue };
            let total = match exit {
                Some(e) => rate * self.obj(self.exited(e)) + (1.0 - rate) * v,
                None => v,
            };
            if best.as_ref().is_none_or(|(b, _)| total < *b) {
                best = Some((total, ch));
            }
        }
        best.map(|(_, c)| c)
    }

    fn diagnose(&self) -> PlanError {
        let p = self.p;
        let mut least: Option<(f64, usize, usize)> = None;
        let mut any_codec = false;
        for c in self.lo..=self.hi.min(self.last.saturating_sub(1)) {
            if self.lo >= self.last {
                break;
            }
            for q in 0..p.codecs.len() {
                let d = p.drop[c][q];
                if d.is_finite() {
                    any_codec = true;
                    if least.is_none_or(|(b, _, _)| d < b) {
                        least = Some((d, c, q));
                    }
                }
            }
        }
        match least {
            Some((d, c, q)) => PlanError::Accuracy {
                budget_pct: self.budget * 100.0,
                best_pct: d * 100.0,
                codec: p.codecs[q].to_string(),
                cut: c,
                device_only_bytes: p.head_param_bytes[self.last],
            },
            None if !any_codec => PlanError::NoCodec { from: self.lo, to: self.hi },
            None => PlanError::Invalid("no feasible plan".into()),
        }
    }
}

/// A problem checked and prepared once, to plan frame after frame in microseconds.
///
/// What depends only on the problem is computed here: the feasible range of first cuts, and,
/// for each exit policy, the cheapest allowed codec at every cut. For a fixed cut the two-tier
/// objective is `A(c) + B · bytes(c, q)` with `B ≥ 0` (latency and energy grow with the bytes
/// sent), so the cheapest allowed codec is the one with the fewest bytes among those within the
/// policy's accuracy budget, whatever the link. Per frame, [`Planner::plan`] is then one pass over
/// the cuts per exit policy.
#[derive(Debug, Clone)]
pub struct Planner<'a> {
    p: &'a Problem,
    last: usize,
    lo: usize,
    hi: usize,
    budget: f64,
    policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    exit: Option<usize>,
    /// Earliest first cut (the exit must be in the head).
    c_lo: usize,
    rate: f64,
    /// Per cut: the allowed codec with the fewest bytes, if any.
    best_codec: Vec<Option<u32>>,
}

impl<'a> Planner<'a> {
    /// Checks `p` and prepares it. Fails when the constraints leave no first cut.
    pub fn new(p: &'a Problem) -> Result<Planner<'a>, PlanError> {
        p.validate().map_err(PlanError::Invalid)?;
        let e = &p.energy;
        if [e.compute_w, e.wait_w, e.radio_base_w, e.radio_up_w_per_mbps, e.radio_down_w_per_mbps]
            .iter()
            .any(|v| !(v.is_finite() && *v >= 0.0))
        {
            return Err(PlanError::Invalid("energy model figures must be finite and non-negative".into()));
        }
        if let Objective::Weighted { latency_weight: w } = p.objective
            && !(0.0..=1.0).contains(&w)
        {
            return Err(PlanError::Invalid("the latency weight must be in 0..1".into()));
        }
        let last = p.last();
        let budget = p.constraints.max_accuracy_drop.unwrap_or(f64::INFINITY);
        if budget.is_nan() || budget < 0.0 {
            return Err(PlanError::Invalid("the accuracy budget must be ≥ 0".into()));
        }
        let lo = p.constraints.min_cut.min(last);
        let hi = match p.constraints.device_memory {
            None => last,
            Some(cap) => match p.head_param_bytes.iter().rposition(|&b| b <= cap) {
                Some(h) => h,
                None => return Err(PlanError::Memory { cap, cut: 0, needed: p.head_param_bytes[0] }),
            },
        };
        if hi < lo {
            let cap = p.constraints.device_memory.unwrap_or(u64::MAX);
            return Err(PlanError::Memory { cap, cut: lo, needed: p.head_param_bytes[lo] });
        }
        let mut policies = vec![];
        let exits = std::iter::once(None).chain((0..p.exits.len()).map(Some));
        for exit in exits {
            let (c_lo, left, rate) = match exit {
                None => (lo, budget, 0.0),
                Some(i) => (lo.max(p.exits[i].cut), budget - p.exits[i].drop, p.exits[i].rate),
            };
            if left < -EPS {
                continue;
            }
            let best_codec = (0..=last)
                .map(|c| {
                    (0..p.codecs.len())
                        .filter(|&q| fits(p.drop[c][q], left))
                        .min_by_key(|&q| (p.bytes[c][q], q))
                        .map(|q| q as u32)
                })
                .collect();
            policies.push(Policy { exit, c_lo, rate, best_codec });
        }
        Ok(Planner { p, last, lo, hi, budget, policies })
    }

    fn ctx<'b>(&'b self, cond: &'b Conditions) -> Ctx<'b> {
        Ctx { p: self.p, cond, last: self.last, lo: self.lo, hi: self.hi, budget: self.budget }
    }

    /// The best plan under `cond`. Exact: the same objective value as [`brute_force`].
    pub fn plan(&self, cond: &Conditions) -> Result<Plan, PlanError> {
        check_conditions(cond)?;
        let ctx = self.ctx(cond);
        let choice = if ctx.three_tier() { ctx.search3(None) } else { self.search2(cond, None) };
        match choice {
            Some(ch) => evaluate_in(&ctx, &ch)
                .ok_or_else(|| PlanError::Invalid("internal: the best choice failed evaluation".into())),
            None => Err(ctx.diagnose()),
        }
    }

    /// Scores one choice under `cond`, as [`evaluate`] does, without checking the problem
    /// again: for callers that score many choices or conditions of one problem.
    pub fn evaluate(&self, cond: &Conditions, ch: &Choice) -> Option<Plan> {
        check_conditions(cond).ok()?;
        evaluate_in(&self.ctx(cond), ch)
    }

    /// The best plan for each allowed first cut, best first, at most `k`.
    pub fn alternatives(&self, cond: &Conditions, k: usize) -> Result<Vec<Plan>, PlanError> {
        check_conditions(cond)?;
        let ctx = self.ctx(cond);
        let mut plans: Vec<Plan> = (self.lo..=self.hi)
            .filter_map(|c| if ctx.three_tier() { ctx.search3(Some(c)) } else { self.search2(cond, Some(c)) })
            .filter_map(|ch| evaluate_in(&ctx, &ch))
            .collect();
        if plans.is_empty() {
            return Err(ctx.diagnose());
        }
        plans.sort_by(|a, b| a.objective.total_cmp(&b.objective));
        plans.truncate(k);
        Ok(plans)
    }

    /// Two tiers: the objective is `A(c) + B · bytes(c, q)`, computed from the same formulas as
    /// [`evaluate`] rearranged.
    fn search2(&self, cond: &Conditions, first: Option<usize>) -> Option<Choice> {
        let p = self.p;
        let (lo, hi) = match first {
            Some(c) if c >= self.lo && c <= self.hi => (c, c),
            Some(_) => return None,
            None => (self.lo, self.hi),
        };
        let last = self.last;
        let (wl, we) = p.objective.weights();
        let l = &cond.link;
        let e = &p.energy;
        let ratio = 1.0 + cleave_cost::link::PACKET_OVERHEAD_RATIO;
        let ms_per_byte = ratio * 8.0 / l.up_bps * 1e3;
        let lat_const = l.rtt_ms
            + l.overhead_bytes as f64 * ms_per_byte
            + cond.server_queue_ms
            + p.server_ms[last]
            + l.down_ms(p.output_bytes);
        let j_per_byte = ratio * 8e-6 * (e.radio_up_w_per_mbps + e.radio_base_w * 1e6 / l.up_bps);
        let wait = e.wait_w / 1e3;
        let j_const = l.overhead_bytes as f64 * j_per_byte + e.receive_j(l.wire_bytes(p.output_bytes), l.down_bps);
        let slope = wl * ms_per_byte + we * (j_per_byte + wait * ms_per_byte);
        let compute = |ms: f64| wl * ms + we * e.compute_w * ms / 1e3;
        let sent_hi = hi.min(last.saturating_sub(1));
        let base: Vec<f64> = if lo < last {
            (lo..=sent_hi)
                .map(|c| {
                    let (dev, srv) = (p.device_ms[c], p.server_ms[c]);
                    wl * (dev - srv + lat_const) + we * (e.compute_w * dev / 1e3 + j_const + wait * (lat_const - srv))
                })
                .collect()
        } else {
            vec![]
        };
        let device_only = (hi == last).then(|| compute(p.device_ms[last]));
        let mut best: Option<(f64, Choice)> = None;
        for pol in &self.policies {
            let c_lo = pol.c_lo.max(lo);
            let mut best_sent: Option<(f64, usize, usize)> = None;
            if c_lo < last {
                for c in c_lo..=sent_hi {
                    if let Some(q) = pol.best_codec[c] {
                        let v = base[c - lo] + slope * p.bytes[c][q as usize] as f64;
                        if best_sent.is_none_or(|(b, _, _)| v < b) {
                            best_sent = Some((v, c, q as usize));
                        }
                    }
                }
            }
            if let Some(v) = device_only
                && c_lo <= last
                && best_sent.is_none_or(|(b, _, _)| v < b)
            {
                best_sent = Some((v, last, 0));
            }
            let Some((v, c, q)) = best_sent else { continue };
            let total = match pol.exit {
                Some(x) => pol.rate * compute(p.device_ms[p.exits[x].cut]) + (1.0 - pol.rate) * v,
                None => v,
            };
            if best.as_ref().is_none_or(|(b, _)| total < *b) {
                best = Some((total, Choice { cut: c, codec: q, second: None, exit: pol.exit }));
            }
        }
        best.map(|(_, c)| c)
    }
}

/// Checks that per-frame conditions are usable.
fn check_conditions(cond: &Conditions) -> Result<(), PlanError> {
    let link_ok = |l: &cleave_cost::Link| {
        l.up_bps.is_finite()
            && l.up_bps > 0.0
            && l.down_bps.is_finite()
            && l.down_bps > 0.0
            && l.rtt_ms.is_finite()
            && l.rtt_ms >= 0.0
    };
    if !link_ok(&cond.link) || !cond.link2.as_ref().is_none_or(link_ok) {
        return Err(PlanError::Invalid("link bandwidths must be positive and RTTs non-negative".into()));
    }
    if !(cond.server_queue_ms.is_finite()
        && cond.server_queue_ms >= 0.0
        && cond.cloud_queue_ms.is_finite()
        && cond.cloud_queue_ms >= 0.0)
    {
        return Err(PlanError::Invalid("queue delays must be non-negative".into()));
    }
    Ok(())
}

/// Pareto front of (accuracy loss, value): loss ascending, value strictly descending.
#[derive(Default)]
struct Front {
    pts: Vec<(f64, f64, usize, usize)>,
}

impl Front {
    fn is_empty(&self) -> bool {
        self.pts.is_empty()
    }

    fn insert(&mut self, d: f64, v: f64, c: usize, q: usize) {
        let mut i = self.pts.partition_point(|p| p.0 <= d);
        if i > 0 && self.pts[i - 1].1 <= v {
            return; // dominated: as lossless or better, and as cheap or cheaper
        }
        while i > 0 && self.pts[i - 1].0 == d {
            self.pts.remove(i - 1);
            i -= 1;
        }
        let mut j = i;
        while j < self.pts.len() && self.pts[j].1 >= v {
            j += 1;
        }
        self.pts.splice(i..j, [(d, v, c, q)]);
    }

    /// The cheapest point with loss ≤ `budget`.
    fn query(&self, budget: f64) -> Option<&(f64, f64, usize, usize)> {
        let i = self.pts.partition_point(|p| p.0 <= budget);
        i.checked_sub(1).map(|i| &self.pts[i])
    }
}

/// Scores one choice: `None` when it breaks a constraint.
pub fn evaluate(p: &Problem, cond: &Conditions, ch: &Choice) -> Option<Plan> {
    Planner::new(p).ok()?.evaluate(cond, ch)
}

fn evaluate_in(ctx: &Ctx, ch: &Choice) -> Option<Plan> {
    let p = ctx.p;
    let cond = ctx.cond;
    let last = ctx.last;
    let c1 = ch.cut;
    if c1 > last || c1 < ctx.lo || c1 > ctx.hi || (c1 < last && ch.codec >= p.codecs.len()) {
        return None;
    }
    let second = ch.second.filter(|&(c2, _)| c2 < last);
    if let Some((c2, q2)) = second
        && (!ctx.three_tier() || c2 <= c1 || q2 >= p.codecs.len())
    {
        return None;
    }
    if ch.second.is_some_and(|(c2, _)| c2 <= c1) {
        return None;
    }
    let (exit_rate, exit_ms, exit_drop) = match ch.exit {
        Some(e) => {
            let x = p.exits.get(e)?;
            if x.cut > c1 {
                return None;
            }
            (x.rate, p.device_ms[x.cut], x.drop)
        }
        None => (0.0, 0.0, 0.0),
    };
    let mut pred = Prediction { exit_rate, exit_ms, ..Default::default() };
    let mut codecs = vec![];
    let mut cuts = vec![c1];
    let mut drop = exit_drop;
    let (lat, energy, bytes_up);
    if c1 == last {
        let (l, e) = ctx.device_only();
        pred.device_ms = l;
        (lat, energy, bytes_up) = (l, e, 0.0);
    } else {
        drop += p.drop[c1][ch.codec];
        codecs.push(p.codecs[ch.codec]);
        let l1 = &cond.link;
        let b1 = p.bytes[c1][ch.codec];
        pred.device_ms = p.device_ms[c1];
        pred.rtt_ms = l1.rtt_ms;
        pred.uplink_ms = l1.up_ms(b1);
        pred.server_queue_ms = cond.server_queue_ms;
        pred.downlink_ms = l1.down_ms(p.output_bytes);
        pred.bytes_down = p.output_bytes;
        match second {
            None => {
                pred.server_ms = p.server_ms[last] - p.server_ms[c1];
                (lat, energy) = ctx.sent_two_tier(c1, ch.codec);
                if ctx.three_tier() {
                    cuts.push(last);
                }
            }
            Some((c2, q2)) => {
                drop += p.drop[c2][q2];
                codecs.push(p.codecs[q2]);
                cuts.push(c2);
                let l2 = cond.link2.as_ref()?;
                let cloud = p.cloud_ms.as_ref()?;
                pred.server_ms = p.server_ms[c2] - p.server_ms[c1];
                pred.rtt_ms += l2.rtt_ms;
                pred.uplink2_ms = l2.up_ms(p.bytes[c2][q2]);
                pred.cloud_queue_ms = cond.cloud_queue_ms;
                pred.cloud_ms = cloud[last] - cloud[c2];
                pred.downlink_ms += l2.down_ms(p.output_bytes);
                let (la, ea) = ctx.device_side(c1, ch.codec);
                let (lb, eb) = ctx.server_side(c2, q2);
                (lat, energy) = (la + lb, ea + eb);
            }
        }
        bytes_up = b1 as f64;
    }
    if !fits(drop, ctx.budget) {
        return None;
    }
    pred.sent_total_ms = lat;
    pred.total_ms = exit_rate * exit_ms + (1.0 - exit_rate) * lat;
    pred.bytes_up = (1.0 - exit_rate) * bytes_up;
    let exit_energy = p.energy.compute_j(exit_ms);
    pred.energy_j = exit_rate * exit_energy + (1.0 - exit_rate) * energy;
    pred.accuracy_drop = drop;
    let objective = match ch.exit {
        Some(_) => {
            exit_rate * p.objective.value(exit_ms, exit_energy) + (1.0 - exit_rate) * p.objective.value(lat, energy)
        }
        None => p.objective.value(lat, energy),
    };
    let exit = ch.exit.map(|e| &p.exits[e]);
    Some(Plan {
        cuts,
        codecs,
        exit: exit.map(|e| e.name.clone()),
        exit_threshold: exit.and_then(|e| e.threshold),
        predicted: pred,
        objective,
        choice: *ch,
    })
}

/// The best plan under `cond`. Exact: the same objective value as [`brute_force`].
/// (Prepares the problem each call; for a plan per frame, keep a [`Planner`].)
pub fn plan(p: &Problem, cond: &Conditions) -> Result<Plan, PlanError> {
    Planner::new(p)?.plan(cond)
}

/// The best plan for each allowed first cut, best first, at most `k`.
pub fn alternatives(p: &Problem, cond: &Conditions, k: usize) -> Result<Vec<Plan>, PlanError> {
    Planner::new(p)?.alternatives(cond, k)
}

/// Every feasible choice, scored: the reference for tests (slow: it enumerates everything).
pub fn brute_force(p: &Problem, cond: &Conditions) -> Result<Plan, PlanError> {
    let planner = Planner::new(p)?;
    check_conditions(cond)?;
    let ctx = planner.ctx(cond);
    let last = ctx.last;
    let nq = p.codecs.len();
    let exits: Vec<Option<usize>> = std::iter::once(None).chain((0..p.exits.len()).map(Some)).collect();
    let mut best: Option<Plan> = None;
    let mut consider = |plan: Option<Plan>| {
        if let Some(plan) = plan
            && best.as_ref().is_none_or(|b| plan.objective < b.objective)
        {
            best = Some(plan);
        }
    };
    for &exit in &exits {
        for c1 in 0..=last {
            for q1 in 0..nq {
                consider(evaluate_in(&ctx, &Choice { cut: c1, codec: q1, second: None, exit }));
                if ctx.three_tier() {
                    for c2 in (c1 + 1)..last {
                        for q2 in 0..nq {
                            consider(evaluate_in(&ctx, &Choice { cut: c1, codec: q1, second: Some((c2, q2)), exit }));
                        }
                    }
                }
            }
        }
    }
    best.ok_or_else(|| ctx.diagnose())
}

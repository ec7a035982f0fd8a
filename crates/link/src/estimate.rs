//! Online estimators a device consults before each frame. Pure: the caller measures and passes
//! durations in.
//!
//! ## Bandwidth: harmonic mean of recent throughputs
//! [`BandwidthEstimator`] keeps the throughputs (bytes / transfer time) of the last `window`
//! transfers and predicts their *harmonic* mean, as MPC video bitrate adaptation does (Yin et
//! al., SIGCOMM 2015). The harmonic mean is the rate at which the same bytes would have taken the
//! same total time if each sample were equally sized, and it is dominated by the slow samples:
//! one transfer at 2 Mbit/s among four at 20 Mbit/s gives 7.7 Mbit/s, not the arithmetic 16.4.
//! Overestimating bandwidth is the expensive mistake for a split-inference device (it ships a big
//! tensor into a slow link and misses its deadline; underestimating only computes a bit more
//! locally), so an estimator that errs low is the right bias.
//!
//! Small transfers do not measure bandwidth: a 2 KB response over a 20 ms RTT link says "100
//! kB/s" whatever the link's rate, because the time is all latency and TCP slow start. Samples
//! below `min_bytes` are therefore **ignored** rather than down-weighted — with one exception: a
//! transfer of at least [`SLOW_SMALL_BYTES`] that spent at least [`SLOW_SMALL_TIME`] on the wire
//! did measure the link (latency noise is a few ms; a 10 KB JPEG taking 90 ms means a ~1 Mbit/s
//! link), so it counts. Without it, a device sending only small payloads would never notice its
//! link getting slow. The exception only admits slow samples, so near the boundary (a transfer
//! of B bytes at about B·8/25 ms bit/s) it errs low, the cheap direction. The transfer time is
//! floored at `min_time` (timer granularity, a transfer that seemingly took 0 s). The caller
//! must remove the server's reported queue and compute time from the round trip before calling
//! [`BandwidthEstimator::observe`]; the estimator sees only time on the wire.
//!
//! When the link has been idle nothing new is learnt: the estimate does not drift toward a prior,
//! it stays where the last transfers left it. But an old sample describes a link that has moved
//! on, and the harmonic mean lets one slow sample rule the window (one 0.07 Mbit/s
//! sample among four at 1–3 Mbit/s gives 0.28 Mbit/s). So a sample also has an age limit
//! ([`BandwidthEstimator::with_max_age`]): the caller stamps each transfer with the time it
//! ended ([`BandwidthEstimator::observe_at`], any origin) and [`BandwidthEstimator::expire`]
//! drops the samples older than the limit, **all of them**: when every sample is old, the
//! estimator knows nothing again and [`BandwidthEstimator::estimate_bps`] is `None`, so the
//! caller falls back to the prior it started from. Keeping the newest sample whatever its age
//! was tried and is worse: when that sample is an outage's, a device it sends home takes no new
//! samples and stays home for good (PP-OCR det on the ATT trace: 0.07 Mbit/s for the last five
//! frames, where JPEG offload answered in 362–682 ms). Without a limit (the default) samples
//! leave by count only.
//!
//! An outage also ends, and the age limit alone keeps its sample ruling the estimate for its
//! whole age after the link is back (a racing device then keeps frames home that the link would
//! carry in a fraction of their local time). So with
//! [`BandwidthEstimator::with_stall_recovery`] a transfer that took at least a given time (a
//! second, for the adaptive device) is a *stall sample*, and it leaves as soon as a later transfer
//! runs some factor (4×) faster than it: the link has been seen moving again. A slow link stays
//! slow in the estimate: only a much faster transfer after the stall removes it, and the bias
//! toward the slow samples stays for everything else. [`BandwidthEstimator::robust_bps`]
//! further divides by `1 + ` the largest recent relative prediction error, RobustMPC's discount,
//! for callers that want a conservative figure on a volatile link.
//!
//! ## RTT: RFC 6298
//! [`RttEstimator`] is TCP's retransmission-timer estimator: smoothed RTT with gain 1/8 and mean
//! deviation with gain 1/4, fed with health-probe or small-request round trips.
//!
//! ## Server load
//! [`LoadEstimator`] smooths the queue delay and compute time the server reports with each
//! answer (EWMA), so the planner can add the expected server time to a candidate plan.

use std::collections::VecDeque;
use std::time::Duration;

/// Smallest transfer that counts as a sample when it was slow (see the module docs).
pub const SLOW_SMALL_BYTES: u64 = 4 * 1024;
/// Wire time from which a small transfer counts as a sample.
pub const SLOW_SMALL_TIME: Duration = Duration::from_millis(25);

/// Harmonic mean of the last `window` transfer throughputs; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct BandwidthEstimator {
    window: usize,
    min_bytes: u64,
    min_time: Duration,
    /// Samples older than this are dropped by [`BandwidthEstimator::expire`].
    max_age: Option<Duration>,
    /// (shortest stalled transfer, speed-up) of [`BandwidthEstimator::with_stall_recovery`].
    recovery: Option<(Duration, f64)>,
    /// (when the transfer ended, throughput in bit/s, whether it was a stall), newest last.
    samples: VecDeque<(Duration, f64, bool)>,
    /// Relative errors of past predictions, newest last.
    errors: VecDeque<f64>,
}

impl Default for BandwidthEstimator {
    /// 5 samples (MPC's window), transfers of at least 16 KiB, times of at least 1 ms.
    fn default() -> Self {
        BandwidthEstimator::new(5, 16 * 1024, Duration::from_millis(1))
    }
}

impl BandwidthEstimator {
    /// Keeps `window` samples (at least 1); ignores transfers under `min_bytes`; counts any
    /// transfer as taking at least `min_time`.
    pub fn new(window: usize, min_bytes: u64, min_time: Duration) -> Self {
        let window = window.max(1);
        BandwidthEstimator {
            window,
            min_bytes,
            min_time,
            max_age: None,
            recovery: None,
            samples: VecDeque::with_capacity(window),
            errors: VecDeque::with_capacity(window),
        }
    }

    /// Samples older than `max_age` are dropped by [`expire`](Self::expire).
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// A transfer that took at least `min_stall` is a *stall sample*, and it is dropped as soon
    /// as a later transfer runs at least `speedup` times faster (see the module docs).
    pub fn with_stall_recovery(mut self, min_stall: Duration, speedup: f64) -> Self {
        self.recovery = Some((min_stall, speedup.max(1.0)));
        self
    }

    /// Records a transfer of `bytes` that spent `elapsed` on the wire, stamped with the newest
    /// time seen so far (so it never ages before the samples already kept). Returns whether it
    /// was used (false when it was too small to measure bandwidth).
    pub fn observe(&mut self, bytes: u64, elapsed: Duration) -> bool {
        let at = self.samples.back().map_or(Duration::ZERO, |s| s.0);
        self.observe_at(at, bytes, elapsed)
    }

    /// [`observe`](Self::observe) for a transfer that ended at `at` (time since any origin the
    /// caller keeps using; see [`expire`](Self::expire)). A time before the newest sample's
    /// counts as the newest sample's: samples stay in order.
    pub fn observe_at(&mut self, at: Duration, bytes: u64, elapsed: Duration) -> bool {
        let slow_small = bytes >= SLOW_SMALL_BYTES.min(self.min_bytes) && elapsed >= SLOW_SMALL_TIME;
        if (bytes < self.min_bytes && !slow_small) || bytes == 0 {
            return false;
        }
        let secs = elapsed.max(self.min_time).as_secs_f64();
        if secs <= 0.0 {
            return false;
        }
        let bps = bytes as f64 * 8.0 / secs;
        if let Some(predicted) = self.estimate_bps() {
            push_bounded(&mut self.errors, (predicted - bps).abs() / bps, self.window);
        }
        let at = self.samples.back().map_or(at, |s| at.max(s.0));
        let stalled = match self.recovery {
            Some((min_stall, speedup)) => {
                // The link has been seen moving again: the stalls it recovered from go.
                self.samples.retain(|s| !(s.2 && s.1 * speedup <= bps));
                elapsed >= min_stall
            }
            None => false,
        };
        push_bounded(&mut self.samples, (at, bps, stalled), self.window);
        while self.errors.len() > self.samples.len() {
            self.errors.pop_front();
        }
        true
    }

    /// Drops the samples that ended more than the age limit before `now` (same origin as
    /// [`observe_at`](Self::observe_at)), possibly all of them. Does nothing without a limit.
    pub fn expire(&mut self, now: Duration) {
        let Some(max_age) = self.max_age else { return };
        while self.samples.front().is_some_and(|s| now.saturating_sub(s.0) > max_age) {
            self.samples.pop_front();
        }
        while self.errors.len() > self.samples.len() {
            self.errors.pop_front();
        }
    }

    /// The harmonic mean of the kept samples, bit/s; `None` before the first usable transfer.
    pub fn estimate_bps(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let inverse: f64 = self.samples.iter().map(|s| 1.0 / s.1).sum();
        Some(self.samples.len() as f64 / inverse)
    }

    /// [`estimate_bps`](Self::estimate_bps) discounted by `1 +` the largest relative error of the
    /// recent predictions (RobustMPC); equal to it until a prediction could be checked.
    pub fn robust_bps(&self) -> Option<f64> {
        let max_err = self.errors.iter().copied().fold(0.0, f64::max);
        self.estimate_bps().map(|e| e / (1.0 + max_err))
    }

    /// The kept throughput samples, bit/s, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = f64> + '_ {
        self.samples.iter().map(|s| s.1)
    }

    /// Forgets every sample (e.g. after switching networks).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.errors.clear();
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, n: usize) {
    if q.len() == n {
        q.pop_front();
    }
    q.push_back(v);
}

/// Smoothed round-trip time and its variation, RFC 6298 (α = 1/8, β = 1/4).
#[derive(Clone, Debug, Default)]
pub struct RttEstimator {
    /// (srtt, rttvar) in seconds, once a sample arrived.
    state: Option<(f64, f64)>,
    samples: u64,
}

impl RttEstimator {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one round trip.
    pub fn observe(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        self.state = Some(match self.state {
            None => (r, r / 2.0),
            Some((srtt, var)) => {
                let var = 0.75 * var + 0.25 * (srtt - r).abs();
                (0.875 * srtt + 0.125 * r, var)
            }
        });
        self.samples += 1;
    }

    /// Smoothed RTT (`None` before any sample).
    pub fn srtt(&self) -> Option<Duration> {
        self.state.map(|(s, _)| Duration::from_secs_f64(s))
    }

    /// Mean deviation of the RTT.
    pub fn rttvar(&self) -> Option<Duration> {
        self.state.map(|(_, v)| Duration::from_secs_f64(v))
    }

    /// `srtt + max(granularity, 4 rttvar)`, at least `floor` (RFC 6298 §2; TCP's floor is 1 s, a
    /// request deadline usually wants far less).
    pub fn timeout(&self, granularity: Duration, floor: Duration) -> Option<Duration> {
        self.state.map(|(s, v)| {
            let t = Duration::from_secs_f64(s) + granularity.max(Duration::from_secs_f64(4.0 * v));
            t.max(floor)
        })
    }

    /// Round trips observed.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Exponentially weighted averages of the server's reported queue delay and compute time.
#[derive(Clone, Debug)]
pub struct LoadEstimator {
    alpha: f64,
    /// (queue ms, compute ms), once a report arrived.
    state: Option<(f64, f64)>,
}

impl Default for LoadEstimator {
    /// Gain 1/4: a step is mostly followed within about 8 reports.
    fn default() -> Self {
        LoadEstimator::new(0.25)
    }
}

impl LoadEstimator {
    /// EWMA with gain `alpha`, clamped to (0, 1].
    pub fn new(alpha: f64) -> Self {
        let alpha = if alpha.is_finite() { alpha.clamp(f64::MIN_POSITIVE, 1.0) } else { 0.25 };
        LoadEstimator { alpha, state: None }
    }

    /// Records one answer's reported queue delay and compute time.
    pub fn observe(&mut self, queue: Duration, compute: Duration) {
        let (q, c) = (ms(queue), ms(compute));
        self.state = Some(match self.state {
            None => (q, c),
            Some((sq, sc)) => (sq + self.alpha * (q - sq), sc + self.alpha * (c - sc)),
        });
    }

    /// Records a queue delay predicted rather than reported (e.g. from the server's load while
    /// no request of ours was answered); the compute time stays as it was. Ignored before any
    /// report (there is no compute time to keep).
    pub fn observe_queue(&mut self, queue: Duration) {
        let q = ms(queue);
        if let Some((sq, _)) = &mut self.state {
            *sq += self.alpha * (q - *sq);
        }
    }

    /// Smoothed queue delay, ms.
    pub fn queue_ms(&self) -> Option<f64> {
        self.state.map(|(q, _)| q)
    }

    /// Smoothed compute time, ms.
    pub fn compute_ms(&self) -> Option<f64> {
        self.state.map(|(_, c)| c)
    }

    /// Expected server time of the next request: smoothed queue delay plus compute time, ms.
    pub fn expected_server_ms(&self) -> Option<f64> {
        self.state.map(|(q, c)| q + c)
    }

    /// Expected server time when `ahead` requests are known to wait before ours (e.g. from the
    /// server's queue-length metric): each costs one smoothed compute time, batching ignored, ms.
    pub fn expected_server_ms_with(&self, ahead: u32) -> Option<f64> {
        self.state.map(|(_, c)| c * (f64::from(ahead) + 1.0))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer of `bytes` at `mbps`.
    fn at(bytes: u64, mbps: f64) -> (u64, Duration) {
        (bytes, Duration::from_secs_f64(bytes as f64 * 8.0 / (mbps * 1e6)))
    }

    fn feed(e: &mut BandwidthEstimator, bytes: u64, mbps: f64) -> bool {
        let (b, t) = at(bytes, mbps);
        e.observe(b, t)
    }

    #[test]
    fn no_estimate_before_a_sample() {
        let e = BandwidthEstimator::default();
        assert_eq!(e.estimate_bps(), None);
        assert_eq!(e.robust_bps(), None);
        assert_eq!(RttEstimator::new().srtt(), None);
        assert_eq!(LoadEstimator::default().expected_server_ms(), None);
    }

    #[test]
    fn harmonic_mean_is_pulled_down_by_one_slow_sample() {
        let mut e = BandwidthEstimator::default();
        for _ in 0..4 {
            feed(&mut e, 1 << 20, 20.0);
        }
        feed(&mut e, 1 << 20, 2.0);
        let est = e.estimate_bps().unwrap() / 1e6;
        // 5 / (4/20 + 1/2) = 7.14 Mbit/s, far below the arithmetic mean of 16.4.
        assert!((est - 5.0 / (4.0 / 20.0 + 0.5)).abs() < 1e-6, "{est}");
    }

    #[test]
    fn a_stall_sample_leaves_once_the_link_is_seen_moving_again() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let mut e = BandwidthEstimator::default().with_stall_recovery(s(1), 4.0);
        e.observe_at(s(17), 27_000, ms(320)); // ≈ 0.68 Mbit/s
        e.observe_at(s(25), 34_000, ms(4_000)); // crossed an outage: ≈ 0.07 Mbit/s
        assert!(e.estimate_bps().unwrap() < 0.13e6, "{:?}", e.samples().collect::<Vec<_>>());
        // Not yet: 0.2 Mbit/s is under 4× the stall sample.
        e.observe_at(s(26), 20_000, ms(800));
        assert_eq!(e.samples().count(), 3);
        // A probe at 1.3 Mbit/s: the link is moving again, the stall sample goes; the slow
        // samples that were not stalls stay.
        e.observe_at(s(27), 16_384, ms(100));
        let left: Vec<f64> = e.samples().map(|b| (b / 1e4).round() / 1e2).collect();
        assert_eq!(left, vec![0.68, 0.2, 1.31]);
        // A slow link whose transfers all take seconds: no faster transfer, nothing leaves.
        let mut slow = BandwidthEstimator::default().with_stall_recovery(s(1), 4.0);
        for k in 0..4 {
            slow.observe_at(s(k), 64_000, ms(2_000 + 300 * k));
        }
        assert_eq!(slow.samples().count(), 4);
        // Without the option a stall stays until it ages out.
        let mut plain = BandwidthEstimator::default();
        plain.observe_at(s(25), 34_000, ms(4_000));
        plain.observe_at(s(27), 16_384, ms(100));
        assert_eq!(plain.samples().count(), 2);
    }

    #[test]
    fn old_samples_age_out_and_with_none_left_there_is_no_estimate() {
        let s = Duration::from_secs;
        let mut e = BandwidthEstimator::default().with_max_age(s(10));
        // A transfer that crossed a 4 s outage, then fast ones.
        e.observe_at(s(25), 40_000, Duration::from_millis(4_600)); // ≈ 0.07 Mbit/s
        e.observe_at(s(33), 16_384, Duration::from_millis(100)); // ≈ 1.3 Mbit/s
        e.expire(s(34));
        assert_eq!(e.samples().count(), 2, "both are younger than 10 s");
        assert!(e.estimate_bps().unwrap() < 0.2e6, "the slow one still rules the harmonic mean");
        e.expire(s(36));
        let left: Vec<f64> = e.samples().collect();
        assert_eq!(left.len(), 1, "the outage sample is 11 s old: {left:?}");
        assert!((e.estimate_bps().unwrap() - 16_384.0 * 8.0 / 0.1).abs() < 1.0);
        // When every sample is old, nothing is known: the caller's prior takes over.
        e.expire(s(44));
        assert_eq!(e.samples().count(), 0);
        assert_eq!(e.estimate_bps(), None);
        // Without a limit nothing ages; a stamp older than the newest sample counts as the newest.
        let mut e = BandwidthEstimator::default();
        e.observe_at(s(5), 1 << 20, Duration::from_secs(1));
        e.observe_at(s(1), 1 << 20, Duration::from_millis(500));
        e.expire(s(3_600));
        assert_eq!(e.samples().count(), 2);
        let mut e = BandwidthEstimator::default().with_max_age(s(10));
        e.observe_at(s(20), 1 << 20, Duration::from_secs(1));
        e.observe_at(s(1), 1 << 20, Duration::from_millis(500));
        e.expire(s(29));
        assert_eq!(e.samples().count(), 2, "the late-stamped sample counts as ending at 20 s");
        e.expire(s(31));
        assert_eq!(e.samples().count(), 0);
    }

    #[test]
    fn tiny_transfers_are_ignored() {
        let mut e = BandwidthEstimator::default();
        feed(&mut e, 1 << 20, 10.0);
        // A 2 KB answer that took 20 ms of latency would claim 0.8 Mbit/s.
        assert!(!e.observe(2000, Duration::from_millis(20)));
        assert!((e.estimate_bps().unwrap() - 10e6).abs() < 1.0);
        assert_eq!(e.samples().count(), 1);
        // A 12 KB JPEG that took 5 ms says nothing either (fast link, latency noise)...
        assert!(!e.observe(12_000, Duration::from_millis(5)));
        assert_eq!(e.samples().count(), 1);
    }

    #[test]
    fn small_but_slow_transfers_count() {
        let mut e = BandwidthEstimator::default();
        feed(&mut e, 1 << 20, 10.0);
        // ...but one that took 96 ms crossed a ~1 Mbit/s link, and the estimate must fall.
        assert!(e.observe(12_000, Duration::from_millis(96)));
        assert_eq!(e.samples().count(), 2);
        assert!(e.estimate_bps().unwrap() < 2e6, "{:?}", e.estimate_bps());
    }

    #[test]
    fn transfer_time_is_floored() {
        let mut e = BandwidthEstimator::new(5, 1000, Duration::from_millis(10));
        assert!(e.observe(125_000, Duration::ZERO));
        // 1 Mbit in the 10 ms floor: 100 Mbit/s, not infinity.
        assert!((e.estimate_bps().unwrap() - 100e6).abs() < 1.0);
    }

    #[test]
    fn step_from_20_to_2_mbps_is_followed_within_the_window() {
        let mut e = BandwidthEstimator::default();
        for _ in 0..10 {
            feed(&mut e, 500_000, 20.0);
        }
        let mut after = Vec::new();
        for _ in 0..5 {
            feed(&mut e, 500_000, 2.0);
            after.push(e.estimate_bps().unwrap() / 1e6);
        }
        // Already below half the old rate after one slow sample, exact after the window.
        assert!(after[0] < 10.0, "{after:?}");
        assert!((after[4] - 2.0).abs() < 1e-9, "{after:?}");
        assert!(after.windows(2).all(|w| w[1] <= w[0]), "{after:?}");
    }

    #[test]
    fn robust_estimate_discounts_by_the_recent_error() {
        let mut e = BandwidthEstimator::default();
        feed(&mut e, 1 << 20, 10.0);
        assert_eq!(e.robust_bps(), e.estimate_bps());
        feed(&mut e, 1 << 20, 5.0); // predicted 10, was 5: error 100 %
        let (est, robust) = (e.estimate_bps().unwrap(), e.robust_bps().unwrap());
        assert!((robust - est / 2.0).abs() < 1e-6, "{est} {robust}");
    }

    #[test]
    fn rtt_follows_rfc6298() {
        let mut r = RttEstimator::new();
        r.observe(Duration::from_millis(100));
        assert_eq!(r.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(r.rttvar(), Some(Duration::from_millis(50)));
        r.observe(Duration::from_millis(200));
        // rttvar = 3/4·50 + 1/4·100 = 62.5; srtt = 7/8·100 + 1/8·200 = 112.5
        let close = |a: Duration, b: f64| (a.as_secs_f64() * 1000.0 - b).abs() < 1e-6;
        assert!(close(r.srtt().unwrap(), 112.5));
        assert!(close(r.rttvar().unwrap(), 62.5));
        let rto = r.timeout(Duration::from_millis(1), Duration::ZERO).unwrap();
        assert!(close(rto, 112.5 + 250.0));
        assert_eq!(r.timeout(Duration::ZERO, Duration::from_secs(1)), Some(Duration::from_secs(1)));
        assert_eq!(r.samples(), 2);
    }

    #[test]
    fn load_estimate_tracks_a_step_in_queue_delay() {
        let mut l = LoadEstimator::default();
        l.observe(Duration::ZERO, Duration::from_millis(10));
        assert_eq!(l.expected_server_ms(), Some(10.0));
        for _ in 0..20 {
            l.observe(Duration::from_millis(50), Duration::from_millis(10));
        }
        let q = l.queue_ms().unwrap();
        assert!((q - 50.0).abs() < 0.2, "{q}");
        assert!((l.expected_server_ms().unwrap() - 60.0).abs() < 0.2);
        assert!((l.expected_server_ms_with(2).unwrap() - 30.0).abs() < 1e-9);
    }
}

//! Packet-delivery traces in mahimahi's format, and generated ones. Pure: no I/O.
//!
//! A trace is a list of millisecond timestamps, one per line, never decreasing. Each line is one
//! *delivery opportunity*: at that millisecond one [`PACKET_BYTES`]-byte packet may cross the
//! link. Several lines may share a millisecond (a faster link). The trace loops: its *period* is
//! its last timestamp, and after the last line it starts again shifted by the period, so
//! opportunity `i` of loop `k` is at `ts[i] + k * period` (mahimahi's `LinkQueue`, which adds the
//! last timestamp to its base on wrap-around). A trace must therefore end after 0 ms.
//!
//! Intervals are half-open on the left: [`Trace::bytes_between`]`(t0, t1)` counts the
//! opportunities at `t0 < t <= t1`. That matches mahimahi, where the opportunities at the
//! millisecond a packet arrives are spent before it is queued, so a sender that starts at `t0`
//! can use exactly the opportunities in `(t0, t1]`.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::LinkError;

/// Bytes that cross the link at one delivery opportunity (mahimahi's `PACKET_SIZE`, an MTU).
pub const PACKET_BYTES: u64 = 1500;

/// A looping delivery schedule: how many packets may cross at each millisecond.
///
/// Cheap to clone (the schedule is shared).
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    inner: Arc<Inner>,
}

#[derive(Debug, PartialEq)]
struct Inner {
    /// Milliseconds that have at least one opportunity, strictly increasing; the last is the period.
    ms: Vec<u64>,
    /// Opportunities at each of `ms`.
    count: Vec<u32>,
    /// `cum[i]`: opportunities at `ms[0..=i]`.
    cum: Vec<u64>,
}

impl Trace {
    /// Parses mahimahi's text format: one non-negative integer millisecond per line, never
    /// decreasing, the last one positive. Blank lines are ignored; surrounding whitespace is
    /// trimmed. Errors name the (1-based) line.
    pub fn parse(text: &str) -> Result<Trace, LinkError> {
        let mut builder = Builder::default();
        let mut prev: Option<u64> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let ms: u64 = line
                .parse()
                .map_err(|_| LinkError::BadTimestamp { line: i + 1, text: line.chars().take(40).collect() })?;
            if let Some(p) = prev
                && ms < p
            {
                return Err(LinkError::Decreasing { line: i + 1, ms, prev: p });
            }
            prev = Some(ms);
            builder.push(ms, 1);
        }
        builder.finish()
    }

    /// Reads a whole trace from `reader` (the caller opens the file) and parses it.
    pub fn from_reader(mut reader: impl std::io::Read) -> Result<Trace, LinkError> {
        let mut text = String::new();
        reader.read_to_string(&mut text)?;
        Trace::parse(&text)
    }

    /// A trace from `(millisecond, opportunities)` runs: milliseconds strictly increasing, the
    /// last one with opportunities (the period) positive. Runs with a count of 0 are skipped, so
    /// they do not lengthen the period.
    pub fn from_runs(runs: impl IntoIterator<Item = (u64, u32)>) -> Result<Trace, LinkError> {
        let mut builder = Builder::default();
        let mut prev: Option<u64> = None;
        for (i, (ms, count)) in runs.into_iter().enumerate() {
            if let Some(p) = prev
                && ms <= p
            {
                return Err(LinkError::Decreasing { line: i + 1, ms, prev: p });
            }
            prev = Some(ms);
            if count > 0 {
                builder.push(ms, count);
            }
        }
        builder.finish()
    }

    /// A constant-rate link of `bits_per_second`: packets spread evenly, with a period of about a
    /// minute so that the mean rate is exact to within 0.01 %.
    pub fn constant(bits_per_second: f64) -> Result<Trace, LinkError> {
        if !(bits_per_second.is_finite() && bits_per_second > 0.0) {
            return Err(LinkError::BadRate(bits_per_second));
        }
        let bits_per_packet = (PACKET_BYTES * 8) as f64;
        // Packet k (1-based) may cross at ceil(k * packet time); n packets fill about 60 s.
        let n = ((bits_per_second * 60.0 / bits_per_packet).round() as u64).max(1);
        let packet_ms = bits_per_packet * 1000.0 / bits_per_second;
        let mut builder = Builder::default();
        for k in 1..=n {
            let ms = ((k as f64 * packet_ms).ceil() as u64).max(1);
            builder.push(ms, 1);
        }
        builder.finish()
    }

    /// A Markov-modulated link, deterministic given `seed`: the rate stays in one of
    /// `states_mbps` (Mbit/s) for an exponentially distributed time of mean `mean_dwell_ms`, then
    /// jumps to another state chosen uniformly. Within a state packets are spread evenly. The
    /// trace lasts `duration_ms` (its period), and its last millisecond always has an opportunity.
    ///
    /// The random numbers come from SplitMix64 implemented here, so a seed names the same trace
    /// in every version of this crate, whatever happens to the `rand` crate's generators.
    pub fn markov(seed: u64, duration_ms: u64, states_mbps: &[f64], mean_dwell_ms: f64) -> Result<Trace, LinkError> {
        if duration_ms == 0 {
            return Err(LinkError::Generator("duration must be at least 1 ms".into()));
        }
        if states_mbps.is_empty() {
            return Err(LinkError::Generator("no rate states given".into()));
        }
        if let Some(bad) = states_mbps.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return Err(LinkError::Generator(format!("rate state {bad} Mbit/s is not positive and finite")));
        }
        if !(mean_dwell_ms.is_finite() && mean_dwell_ms >= 1.0) {
            return Err(LinkError::Generator(format!("mean dwell {mean_dwell_ms} ms must be at least 1 ms")));
        }
        let mut rng = SplitMix64(seed);
        let mut state = rng.below(states_mbps.len() as u64) as usize;
        let mut state_ends = 0u64;
        let mut credit = 0.0f64; // bytes the link may carry that no packet has used yet
        let mut builder = Builder::default();
        for ms in 1..=duration_ms {
            if ms > state_ends {
                if ms > 1 && states_mbps.len() > 1 {
                    // Uniformly among the other states.
                    let j = rng.below(states_mbps.len() as u64 - 1) as usize;
                    state = if j >= state { j + 1 } else { j };
                }
                let dwell = -mean_dwell_ms * (1.0 - rng.unit()).ln();
                state_ends = ms + (dwell.round() as u64).max(1) - 1;
            }
            credit += states_mbps[state] * 1e6 / 8.0 / 1000.0;
            let packets = (credit / PACKET_BYTES as f64).floor();
            credit -= packets * PACKET_BYTES as f64;
            let mut packets = packets as u32;
            if ms == duration_ms && packets == 0 {
                packets = 1; // the period needs an opportunity at its last millisecond
            }
            if packets > 0 {
                builder.push(ms, packets);
            }
        }
        builder.finish()
    }

    /// The trace in mahimahi's text format (one line per opportunity), e.g. to save a generated
    /// trace for `mm-link`.
    pub fn to_mahimahi(&self) -> String {
        let mut out = String::new();
        for (ms, count) in self.runs() {
            for _ in 0..count {
                let _ = writeln!(out, "{ms}");
            }
        }
        out
    }

    /// The period in milliseconds (the last timestamp).
    pub fn period_ms(&self) -> u64 {
        *self.inner.ms.last().expect("a trace is never empty")
    }

    /// Delivery opportunities in one period.
    pub fn opportunities(&self) -> u64 {
        *self.inner.cum.last().expect("a trace is never empty")
    }

    /// `(millisecond, opportunities)` for every millisecond of one period that has any.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.inner.ms.iter().copied().zip(self.inner.count.iter().copied())
    }

    /// Mean capacity over one period, bit/s.
    pub fn mean_bps(&self) -> f64 {
        (self.opportunities() * PACKET_BYTES * 8) as f64 * 1000.0 / self.period_ms() as f64
    }

    /// Opportunities at times `<= t_ms` (looping), counting from time 0 exclusive of nothing:
    /// the opportunities at 0 itself are included.
    pub fn opportunities_through(&self, t_ms: u64) -> u64 {
        let period = self.period_ms();
        let (q, r) = (t_ms / period, t_ms % period);
        q * self.opportunities() + self.within_period(r)
    }

    /// Opportunities of the first period at `ms <= r`.
    fn within_period(&self, r: u64) -> u64 {
        let i = self.inner.ms.partition_point(|&m| m <= r);
        if i == 0 { 0 } else { self.inner.cum[i - 1] }
    }

    /// Bytes the link can carry in `(t0_ms, t1_ms]`, looping; 0 when `t1_ms <= t0_ms`.
    pub fn bytes_between(&self, t0_ms: u64, t1_ms: u64) -> u64 {
        if t1_ms <= t0_ms {
            return 0;
        }
        (self.opportunities_through(t1_ms) - self.opportunities_through(t0_ms)) * PACKET_BYTES
    }

    /// Capacity in bit/s averaged over the `window_ms` ending at `t_ms` (shorter near 0), for
    /// plotting a trace.
    pub fn rate_at(&self, t_ms: u64, window_ms: u64) -> f64 {
        let from = t_ms.saturating_sub(window_ms.max(1));
        let span = t_ms - from;
        if span == 0 {
            return 0.0;
        }
        (self.bytes_between(from, t_ms) * 8) as f64 * 1000.0 / span as f64
    }

    /// The first opportunity strictly after `t_ms`: its time and how many packets may cross then.
    /// At a period boundary the last millisecond of one loop and millisecond 0 of the next
    /// coincide, and their counts are added.
    pub fn next_after(&self, t_ms: u64) -> (u64, u64) {
        let period = self.period_ms();
        let (q, r) = (t_ms / period, t_ms % period);
        let ms = &self.inner.ms;
        // r < period = ms.last(), so some millisecond is after r.
        let i = ms.partition_point(|&m| m <= r);
        let mut count = u64::from(self.inner.count[i]);
        if ms[i] == period && ms[0] == 0 {
            count += u64::from(self.inner.count[0]);
        }
        (q * period + ms[i], count)
    }

    /// How long `bytes` take to cross an idle link when they are handed to it at `start_ms`:
    /// milliseconds from `start_ms` to the opportunity that carries the last byte (0 for 0 bytes).
    pub fn transfer_ms(&self, start_ms: u64, bytes: u64) -> u64 {
        if bytes == 0 {
            return 0;
        }
        let need = bytes.div_ceil(PACKET_BYTES);
        let base = self.opportunities_through(start_ms);
        // Every period carries at least one opportunity, so this bound is enough.
        let mut hi = start_ms + (need / self.opportunities() + 2) * self.period_ms();
        let mut lo = start_ms; // carries fewer than `need`
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.opportunities_through(mid) - base >= need {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi - start_ms
    }
}

/// Accumulates `(ms, count)` runs, merging equal milliseconds.
#[derive(Default)]
struct Builder {
    ms: Vec<u64>,
    count: Vec<u32>,
}

impl Builder {
    fn push(&mut self, ms: u64, count: u32) {
        match self.ms.last() {
            Some(&last) if last == ms => *self.count.last_mut().expect("parallel vectors") += count,
            _ => {
                self.ms.push(ms);
                self.count.push(count);
            }
        }
    }

    fn finish(self) -> Result<Trace, LinkError> {
        match self.ms.last() {
            None => return Err(LinkError::Empty),
            Some(0) => return Err(LinkError::ZeroPeriod),
            Some(_) => {}
        }
        let cum = self
            .count
            .iter()
            .scan(0u64, |acc, &c| {
                *acc += u64::from(c);
                Some(*acc)
            })
            .collect();
        Ok(Trace { inner: Arc::new(Inner { ms: self.ms, count: self.count, cum }) })
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and fixed forever here, so a seed
/// names the same sequence in every version (traces, the chaos bench's nemesis).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-64 n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_counts_opportunities_per_millisecond_and_the_period() {
        let t = Trace::parse("1\n1\n3\n\n5\n5\n5\n").unwrap();
        assert_eq!(t.runs().collect::<Vec<_>>(), vec![(1, 2), (3, 1), (5, 3)]);
        assert_eq!(t.period_ms(), 5);
        assert_eq!(t.opportunities(), 6);
        // 6 packets of 12 000 bits in 5 ms.
        assert!((t.mean_bps() - 6.0 * 12_000.0 * 200.0).abs() < 1e-6);
    }

    #[test]
    fn parse_names_the_line_of_garbage() {
        let err = Trace::parse("1\n2\nabc\n").unwrap_err();
        assert!(matches!(err, LinkError::BadTimestamp { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = Trace::parse("1\n-4\n").unwrap_err();
        assert!(matches!(err, LinkError::BadTimestamp { line: 2, .. }), "{err}");
    }

    #[test]
    fn parse_rejects_decreasing_timestamps_with_their_line() {
        let err = Trace::parse("1\n5\n4\n").unwrap_err();
        assert!(matches!(err, LinkError::Decreasing { line: 3, ms: 4, prev: 5 }), "{err}");
    }

    #[test]
    fn parse_rejects_empty_and_zero_length_traces() {
        assert!(matches!(Trace::parse(""), Err(LinkError::Empty)));
        assert!(matches!(Trace::parse("\n \n"), Err(LinkError::Empty)));
        assert!(matches!(Trace::parse("0\n0\n"), Err(LinkError::ZeroPeriod)));
    }

    #[test]
    fn from_reader_parses_what_it_reads() {
        let t = Trace::from_reader("2\n4\n".as_bytes()).unwrap();
        assert_eq!(t.period_ms(), 4);
    }

    #[test]
    fn bytes_between_is_left_open_and_loops_with_the_period() {
        // Opportunities at 0, 2, 2, 4 (period 4); loop k adds 4k.
        let t = Trace::parse("0\n2\n2\n4\n").unwrap();
        assert_eq!(t.bytes_between(0, 2), 2 * PACKET_BYTES);
        // (0, 4] holds 2, 2, 4 and loop 1's 0, which coincides with 4.
        assert_eq!(t.bytes_between(0, 4), 4 * PACKET_BYTES);
        // At 4 the last line of loop 0 and the first of loop 1 coincide.
        assert_eq!(t.bytes_between(3, 4), 2 * PACKET_BYTES);
        assert_eq!(t.bytes_between(4, 8), 4 * PACKET_BYTES);
        assert_eq!(t.bytes_between(0, 400), 100 * 4 * PACKET_BYTES);
        assert_eq!(t.bytes_between(5, 5), 0);
        assert_eq!(t.bytes_between(6, 5), 0);
    }

    #[test]
    fn next_after_walks_every_opportunity_of_bytes_between() {
        let t = Trace::parse("0\n2\n2\n4\n7\n7\n").unwrap();
        let mut at = 3;
        let mut seen = 0;
        while at < 100 {
            let (next, count) = t.next_after(at);
            assert!(next > at);
            assert_eq!(t.bytes_between(at, next), count * PACKET_BYTES);
            seen += count;
            at = next;
        }
        assert_eq!(seen * PACKET_BYTES, t.bytes_between(3, at));
    }

    #[test]
    fn transfer_ms_is_the_opportunity_carrying_the_last_byte() {
        let t = Trace::parse("1\n2\n3\n4\n").unwrap();
        assert_eq!(t.transfer_ms(0, 1), 1);
        assert_eq!(t.transfer_ms(0, PACKET_BYTES), 1);
        assert_eq!(t.transfer_ms(0, PACKET_BYTES + 1), 2);
        assert_eq!(t.transfer_ms(10, 10 * PACKET_BYTES), 10);
        assert_eq!(t.transfer_ms(10, 0), 0);
    }

    #[test]
    fn constant_trace_has_the_requested_mean_rate() {
        for bps in [0.3e6, 1e6, 5.5e6, 17e6, 100e6] {
            let t = Trace::constant(bps).unwrap();
            assert!((t.mean_bps() / bps - 1.0).abs() < 1e-3, "{bps}: {}", t.mean_bps());
            // Evenly spread: any second carries the rate to within a packet or two.
            let second = t.bytes_between(12_345, 13_345) as f64 * 8.0;
            assert!((second - bps).abs() <= 2.0 * 12_000.0, "{bps}: {second}");
        }
        assert!(matches!(Trace::constant(0.0), Err(LinkError::BadRate(_))));
        assert!(matches!(Trace::constant(f64::NAN), Err(LinkError::BadRate(_))));
    }

    #[test]
    fn markov_is_deterministic_given_its_seed_and_spans_its_states() {
        let states = [0.5, 2.0, 8.0, 20.0];
        let a = Trace::markov(7, 60_000, &states, 2_000.0).unwrap();
        let b = Trace::markov(7, 60_000, &states, 2_000.0).unwrap();
        let c = Trace::markov(8, 60_000, &states, 2_000.0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.period_ms(), 60_000);
        let mean = a.mean_bps();
        assert!(mean > 0.5e6 && mean < 20e6, "{mean}");
        // Over 500 ms windows the rate is close to one of the states most of the time and visits
        // both extremes.
        let rates: Vec<f64> = (1..120).map(|i| a.rate_at(i * 500, 500) / 1e6).collect();
        assert!(rates.iter().any(|r| *r < 1.0), "{rates:?}");
        assert!(rates.iter().any(|r| *r > 15.0), "{rates:?}");
    }

    #[test]
    fn markov_rejects_nonsense_parameters() {
        assert!(Trace::markov(1, 0, &[1.0], 10.0).is_err());
        assert!(Trace::markov(1, 10, &[], 10.0).is_err());
        assert!(Trace::markov(1, 10, &[-1.0], 10.0).is_err());
        assert!(Trace::markov(1, 10, &[1.0], 0.0).is_err());
    }

    #[test]
    fn to_mahimahi_round_trips() {
        let t = Trace::markov(3, 2_000, &[1.0, 6.0], 300.0).unwrap();
        assert_eq!(Trace::parse(&t.to_mahimahi()).unwrap(), t);
    }

    #[test]
    fn from_runs_rejects_unordered_milliseconds() {
        assert!(Trace::from_runs([(1, 1), (1, 2)]).is_err());
        assert_eq!(Trace::from_runs([(1, 2), (3, 0), (4, 1)]).unwrap().opportunities(), 3);
    }
}

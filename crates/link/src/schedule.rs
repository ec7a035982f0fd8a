//! [`Shaper`]: when bytes handed to a trace-driven link come out of it. Pure: the caller owns the
//! clock and passes times in; nothing here sleeps or reads a clock.
//!
//! The model is mahimahi's link queue applied to a byte stream:
//! - bytes submitted at time `t` join a FIFO queue;
//! - at each delivery opportunity *strictly after* `t`, up to [`PACKET_BYTES`] bytes per
//!   opportunity leave the queue, oldest first;
//! - an opportunity that finds the queue empty is lost (it cannot be saved for later);
//! - bytes that leave the link at `d` arrive at `d + delay` (a fixed one-way propagation delay),
//!   in order.
//!
//! Unlike mahimahi, which carries whole IP packets, the queue holds stream bytes: a TCP stream
//! has no packets the proxy could see, and for a saturated sender the two agree exactly (every
//! opportunity carries 1500 bytes). Header overhead is not charged, so the payload rate is the
//! trace's full rate.
//!
//! Times are microseconds on a virtual clock. The trace is anchored at `origin_us`: trace
//! millisecond `offset_ms + k` is virtual time `origin_us + 1000 k`.
//!
//! ## Queue limit: backpressure, not drops
//! A real bottleneck buffer drops packets when full and TCP retransmits them. A byte stream
//! cannot lose bytes, and the thing the proxy carries *is* a TCP stream, so the limit here blocks
//! the writer instead: [`Shaper::submit`] accepts at most [`Shaper::room`] bytes and the caller
//! keeps the rest (the proxy simply stops reading its socket, and TCP flow control pushes back
//! on the sender). The limit thus bounds the queueing delay the link adds, as a bottleneck
//! buffer does, without corrupting the stream.

use std::collections::VecDeque;
use std::time::Duration;

use crate::trace::{PACKET_BYTES, Trace};

/// How far ahead [`Shaper::read_room`] lets a reader fill the queue, in trace milliseconds.
pub const READ_AHEAD_MS: u64 = 10;

/// Bytes that arrive at the far end at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Virtual time of arrival, µs (after the one-way delay).
    pub at_us: u64,
    /// How many bytes, continuing the stream where the previous delivery ended.
    pub bytes: u64,
}

/// A trace-driven link for one direction of one byte stream: a FIFO byte queue drained at the
/// trace's delivery opportunities, then a fixed delay. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Shaper {
    /// `None`: no rate limit (bytes leave the queue as soon as they are submitted).
    trace: Option<Trace>,
    origin_us: u64,
    offset_ms: u64,
    /// Trace milliseconds `<= cursor_ms` have been spent.
    cursor_ms: u64,
    now_us: u64,
    delay_us: u64,
    limit: Option<u64>,
    queued: u64,
    submitted: u64,
    departed: u64,
    /// Bytes that left the link, waiting out the delay (at_us non-decreasing).
    out: VecDeque<Delivery>,
    last_at_us: u64,
}

impl Shaper {
    /// A link following `trace` (or unlimited with `None`) from trace millisecond 0 at virtual
    /// time 0, with no delay and no queue limit.
    pub fn new(trace: Option<Trace>) -> Shaper {
        Shaper {
            trace,
            origin_us: 0,
            offset_ms: 0,
            cursor_ms: 0,
            now_us: 0,
            delay_us: 0,
            limit: None,
            queued: 0,
            submitted: 0,
            departed: 0,
            out: VecDeque::new(),
            last_at_us: 0,
        }
    }

    /// Starts `offset_ms` into the trace: trace millisecond `offset_ms` is virtual time 0.
    pub fn with_offset(mut self, offset_ms: u64) -> Shaper {
        self.offset_ms = offset_ms;
        self.cursor_ms = offset_ms;
        self
    }

    /// Sets the one-way delay added after the link.
    pub fn with_delay(mut self, delay: Duration) -> Shaper {
        self.set_delay(delay);
        self
    }

    /// Sets the queue limit in bytes (`None`: unbounded). See the module docs: backpressure.
    pub fn with_queue_limit(mut self, limit: Option<u64>) -> Shaper {
        self.limit = limit;
        self
    }

    /// Switches to `trace` (`None`: unlimited), with trace millisecond `offset_ms` at virtual time
    /// `origin_us`. Queued bytes stay queued and drain at the new trace's opportunities after
    /// `max(origin_us, now)`.
    pub fn set_trace(&mut self, trace: Option<Trace>, origin_us: u64, offset_ms: u64) {
        self.advance(origin_us);
        self.trace = trace;
        self.origin_us = origin_us;
        self.offset_ms = offset_ms;
        self.cursor_ms = self.trace_ms(self.now_us);
        if self.trace.is_none() {
            self.depart(self.now_us, self.queued);
        }
    }

    /// Sets the one-way delay for bytes that leave the link from now on. Bytes already in flight
    /// keep theirs; arrivals never reorder (a shorter delay waits behind earlier bytes).
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
    }

    /// Sets the queue limit (`None`: unbounded). Bytes already queued are kept.
    pub fn set_queue_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    /// The one-way delay.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us)
    }

    /// Bytes that may be submitted now without exceeding the queue limit.
    pub fn room(&self) -> u64 {
        self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.queued))
    }

    /// How many bytes a reader feeding this link should take from its sender now: the
    /// [`room`](Self::room), capped so that no more than the link can carry in the next
    /// [`READ_AHEAD_MS`] (at least two packets, when it carries any) waits in the queue. What is
    /// not read stays with the sender, whose TCP stack then sees bytes go unacknowledged while
    /// the link does not move them, as it would behind a real bottleneck. The cap still covers a
    /// reader that wakes a few milliseconds late, so no opportunity finds the queue empty for
    /// that reason. While the link carries nothing in that time (an outage, a sparse trace's gap)
    /// nothing is read: the sender's socket sees no byte acknowledged that the link has not
    /// carried or is about to ([`next_read_us`](Self::next_read_us) says when to look again).
    /// Unlimited links read as much as there is room for.
    pub fn read_room(&self) -> u64 {
        let Some(trace) = &self.trace else { return self.room() };
        let from = self.trace_ms(self.now_us);
        let soon = trace.bytes_between(from, from + READ_AHEAD_MS);
        let ahead = if soon == 0 { 0 } else { soon.max(2 * PACKET_BYTES) };
        self.room().min(ahead.saturating_sub(self.queued))
    }

    /// When a reader that [`read_room`](Self::read_room) holds back because the link carries
    /// nothing in the next [`READ_AHEAD_MS`] should look again: that long before the next
    /// opportunity, µs (always after the present). `None` on an unlimited link, and when the
    /// link does carry something soon (a reader held back then waits for the queue to drain,
    /// at the opportunity).
    pub fn next_read_us(&self) -> Option<u64> {
        let trace = self.trace.as_ref()?;
        let from = self.trace_ms(self.now_us);
        if trace.bytes_between(from, from + READ_AHEAD_MS) > 0 {
            return None;
        }
        let (ms, _) = trace.next_after(from.max(self.cursor_ms));
        Some(self.virtual_us(ms).saturating_sub(READ_AHEAD_MS * 1000).max(self.now_us + 1))
    }

    /// Bytes waiting for the link.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// Bytes accepted so far (the stream offset after the last accepted byte).
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Bytes that have left the link (not necessarily arrived yet).
    pub fn departed(&self) -> u64 {
        self.departed
    }

    /// True when nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queued == 0 && self.out.is_empty()
    }

    /// The latest time the shaper has been advanced to, µs.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// Hands `bytes` to the link at `at_us` (times before the shaper's present count as the
    /// present). Accepts at most [`Shaper::room`] bytes and returns how many it took; the accepted
    /// bytes are stream offsets `submitted() - accepted .. submitted()`.
    pub fn submit(&mut self, at_us: u64, bytes: u64) -> u64 {
        self.advance(at_us);
        let accepted = bytes.min(self.room());
        self.submitted += accepted;
        if self.trace.is_none() {
            self.depart(self.now_us, accepted);
        } else {
            self.queued += accepted;
        }
        accepted
    }

    /// Runs the link up to `now_us`: every opportunity at or before it carries queued bytes.
    pub fn advance(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        let Some(trace) = self.trace.clone() else { return };
        if self.now_us < self.origin_us {
            return;
        }
        let now_ms = self.trace_ms(self.now_us);
        while self.queued > 0 {
            let (ms, count) = trace.next_after(self.cursor_ms);
            if ms > now_ms {
                break;
            }
            self.cursor_ms = ms;
            let bytes = self.queued.min(count * PACKET_BYTES);
            self.depart(self.virtual_us(ms), bytes);
        }
        // With the queue empty, the opportunities up to now are lost.
        if self.queued == 0 {
            self.cursor_ms = self.cursor_ms.max(now_ms);
        }
    }

    /// An outage up to `now_us`: the opportunities until then are lost and queued bytes stay
    /// queued (bytes already past the link still arrive).
    pub fn outage(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        if self.now_us >= self.origin_us {
            self.cursor_ms = self.cursor_ms.max(self.trace_ms(self.now_us));
        }
    }

    /// Advances to `now_us` and pops the next delivery that has arrived by then.
    pub fn pop_due(&mut self, now_us: u64) -> Option<Delivery> {
        self.advance(now_us);
        if self.out.front().is_some_and(|d| d.at_us <= now_us) { self.out.pop_front() } else { None }
    }

    /// Advances to `until_us` and takes every delivery that has arrived by then.
    pub fn take_due(&mut self, until_us: u64) -> Vec<Delivery> {
        let mut v = Vec::new();
        while let Some(d) = self.pop_due(until_us) {
            v.push(d);
        }
        v
    }

    /// When something next happens (an opportunity with bytes queued, or an arrival), µs; `None`
    /// when idle.
    pub fn next_wake_us(&self) -> Option<u64> {
        let arrival = self.out.front().map(|d| d.at_us);
        let opportunity = match (&self.trace, self.queued) {
            (Some(_), q) if q > 0 => self.next_opportunity_us(),
            _ => None,
        };
        match (arrival, opportunity) {
            (Some(a), Some(o)) => Some(a.min(o)),
            (a, o) => a.or(o),
        }
    }

    /// Virtual time of the next delivery opportunity, µs (`None` on an unlimited link).
    pub fn next_opportunity_us(&self) -> Option<u64> {
        let trace = self.trace.as_ref()?;
        let (ms, _) = trace.next_after(self.cursor_ms);
        Some(self.virtual_us(ms))
    }

    /// When every byte submitted so far will have arrived, µs (the present when idle). Computed
    /// on a copy, so it changes nothing; later submissions cannot change it (FIFO).
    pub fn drain_time_us(&self) -> u64 {
        let mut sim = self.clone();
        let mut last = self.now_us;
        while let Some(wake) = sim.next_wake_us() {
            for d in sim.take_due(wake) {
                last = last.max(d.at_us);
            }
        }
        last
    }

    /// The trace millisecond current at virtual time `v_us >= origin_us`.
    fn trace_ms(&self, v_us: u64) -> u64 {
        self.offset_ms + v_us.saturating_sub(self.origin_us) / 1000
    }

    /// Virtual time of trace millisecond `ms >= offset_ms`.
    fn virtual_us(&self, ms: u64) -> u64 {
        self.origin_us + (ms - self.offset_ms) * 1000
    }

    fn depart(&mut self, left_us: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.queued -= bytes.min(self.queued);
        self.departed += bytes;
        let at_us = left_us.saturating_add(self.delay_us).max(self.last_at_us);
        self.last_at_us = at_us;
        match self.out.back_mut() {
            Some(last) if last.at_us == at_us => last.bytes += bytes,
            _ => self.out.push_back(Delivery { at_us, bytes }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_ms(period: u64) -> Trace {
        Trace::from_runs((1..=period).map(|ms| (ms, 1))).unwrap()
    }

    #[test]
    fn bytes_leave_at_opportunities_strictly_after_submission() {
        let mut s = Shaper::new(Some(every_ms(10)));
        s.submit(0, 3000);
        assert_eq!(
            s.take_due(4_000),
            vec![Delivery { at_us: 1000, bytes: 1500 }, Delivery { at_us: 2000, bytes: 1500 }]
        );
        // Submitted exactly at 5 ms: the opportunity at 5 ms is already spent.
        s.submit(5000, 100);
        assert_eq!(s.take_due(10_000), vec![Delivery { at_us: 6000, bytes: 100 }]);
    }

    #[test]
    fn an_idle_link_loses_its_opportunities() {
        let mut s = Shaper::new(Some(every_ms(100)));
        s.advance(50_000);
        s.submit(50_500, 1500 * 3);
        let d = s.take_due(1_000_000);
        assert_eq!(d.iter().map(|d| d.at_us).collect::<Vec<_>>(), vec![51_000, 52_000, 53_000]);
    }

    #[test]
    fn delay_is_added_after_the_link_and_never_reorders() {
        let mut s = Shaper::new(Some(every_ms(10))).with_delay(Duration::from_millis(40));
        s.submit(0, 1500);
        assert_eq!(s.next_wake_us(), Some(1000));
        s.set_delay(Duration::from_millis(5));
        s.advance(500); // nothing left the link yet: it takes the new delay
        s.set_delay(Duration::from_millis(40));
        s.advance(1000);
        s.set_delay(Duration::ZERO);
        s.submit(1500, 1500);
        let d = s.take_due(100_000);
        assert_eq!(d, vec![Delivery { at_us: 41_000, bytes: 3000 }]);
    }

    #[test]
    fn a_reader_takes_only_what_the_link_carries_soon() {
        // One packet every 10 ms: 10 ms ahead is one packet, so the two-packet floor applies.
        let mut s = Shaper::new(Some(Trace::from_runs([(10, 1)]).unwrap()));
        assert_eq!(s.read_room(), 3000);
        s.submit(0, 2000);
        assert_eq!(s.read_room(), 1000);
        s.submit(0, 1000);
        assert_eq!(s.read_room(), 0);
        // The opportunity at 10 ms carries 1500: room for that much again.
        s.advance(10_000);
        assert_eq!(s.read_room(), 1500);
        // A fast link (a packet every millisecond) is read ten packets ahead.
        let fast = Shaper::new(Some(every_ms(10)));
        assert_eq!(fast.read_room(), 15_000);
        // The queue limit still binds, and an unlimited link reads what there is room for.
        assert_eq!(fast.clone().with_queue_limit(Some(4000)).read_room(), 4000);
        assert_eq!(Shaper::new(None).read_room(), u64::MAX);
        assert_eq!(Shaper::new(None).next_read_us(), None);
    }

    /// Regression (resnet50-light on the EVDO trace, frame 14, rounds at `9287497` and
    /// `dd9c7a6`): the proxy read two packets ahead while the trace carried nothing, so the
    /// device's socket saw its 13.5 KB request acknowledged 265 ms after sending although the
    /// link carried it much later, and the device held its own tail for an answer that could not
    /// come yet. A reader now takes nothing while the link carries nothing soon.
    #[test]
    fn a_reader_takes_nothing_while_the_link_carries_nothing_soon() {
        // A packet at 5 ms, then an outage until 500 ms, then a packet every 20 ms.
        let mut ms = vec![5];
        ms.extend((500..=1000).step_by(20));
        let mut s = Shaper::new(Some(Trace::from_runs(ms.iter().map(|&m| (m, 1))).unwrap()));
        assert_eq!(s.read_room(), 3000, "a packet within 10 ms: two packets' room");
        assert_eq!(s.next_read_us(), None);
        s.submit(0, 3000);
        s.advance(5_000);
        assert_eq!(s.queued(), 1500);
        assert_eq!(s.read_room(), 0, "the next opportunity is 495 ms away");
        assert_eq!(s.next_read_us(), Some(490_000));
        s.advance(489_000);
        assert_eq!(s.read_room(), 0);
        s.advance(490_000);
        assert_eq!(s.read_room(), 1500, "the queued packet fills the rest of two");
        assert_eq!(s.next_read_us(), None, "the opportunity at 500 ms wakes the reader");
        // Never a wake in the past, so a reader cannot spin.
        let sparse = Shaper::new(Some(Trace::from_runs([(15, 1)]).unwrap()));
        assert_eq!(sparse.read_room(), 0);
        assert_eq!(sparse.next_read_us(), Some(5_000));
        let mut late = sparse.clone();
        late.advance(5_000);
        assert_eq!(late.read_room(), 3000);
    }

    #[test]
    fn queue_limit_blocks_the_writer_instead_of_dropping() {
        let mut s = Shaper::new(Some(every_ms(10))).with_queue_limit(Some(4000));
        assert_eq!(s.submit(0, 10_000), 4000);
        assert_eq!(s.room(), 0);
        s.advance(1000);
        assert_eq!(s.room(), 1500);
        assert_eq!(s.submit(1000, 10_000), 1500);
        assert_eq!(s.submitted(), 5500);
    }

    #[test]
    fn unlimited_link_only_delays() {
        let mut s = Shaper::new(None).with_delay(Duration::from_millis(3));
        s.submit(10, 1_000_000);
        assert_eq!(s.next_wake_us(), Some(3010));
        assert_eq!(s.pop_due(3009), None);
        assert_eq!(s.pop_due(3010), Some(Delivery { at_us: 3010, bytes: 1_000_000 }));
    }

    #[test]
    fn offset_and_origin_anchor_the_trace() {
        // Opportunities only at trace ms 7 of a 10 ms period.
        let t = Trace::parse("7\n10\n").unwrap();
        let mut s = Shaper::new(Some(t.clone())).with_offset(5);
        s.submit(0, 3000);
        // Trace ms 7 and 10 are virtual 2 ms and 5 ms.
        assert_eq!(s.take_due(10_000).iter().map(|d| d.at_us).collect::<Vec<_>>(), vec![2000, 5000]);
        let mut s = Shaper::new(None);
        s.set_trace(Some(t), 100_000, 0);
        s.submit(100_000, 1500);
        assert_eq!(s.take_due(1_000_000), vec![Delivery { at_us: 107_000, bytes: 1500 }]);
    }

    #[test]
    fn outage_loses_opportunities_but_keeps_the_queue() {
        let mut s = Shaper::new(Some(every_ms(100)));
        s.submit(0, 1500 * 5);
        s.advance(2000);
        s.outage(50_000);
        let d = s.take_due(1_000_000);
        assert_eq!(d.iter().map(|d| d.at_us).collect::<Vec<_>>(), vec![1000, 2000, 51_000, 52_000, 53_000]);
    }

    #[test]
    fn drain_time_is_when_the_last_byte_arrives() {
        let mut s = Shaper::new(Some(every_ms(10))).with_delay(Duration::from_millis(20));
        s.submit(0, 1500 * 4 + 1);
        assert_eq!(s.drain_time_us(), 25_000);
        assert_eq!(s.queued(), 1500 * 4 + 1, "drain_time_us changes nothing");
        assert_eq!(Shaper::new(None).drain_time_us(), 0);
    }
}

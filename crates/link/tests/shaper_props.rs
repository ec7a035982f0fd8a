//! Properties of the pure [`Shaper`] against the capacity its [`Trace`] defines.

use cleave_link::{Delivery, PACKET_BYTES, Shaper, Trace};
use proptest::prelude::*;

/// A trace of up to 40 ms with 0–3 opportunities per millisecond (at least one at the end).
fn trace() -> impl Strategy<Value = Trace> {
    (prop::collection::vec(0u32..4, 1..40), 1u32..4).prop_map(|(counts, last)| {
        let n = counts.len() as u64;
        let runs = counts.into_iter().enumerate().map(|(i, c)| (i as u64, c));
        let runs: Vec<_> = runs.chain([(n, last)]).collect();
        Trace::from_runs(runs).unwrap()
    })
}

/// Submissions: (gap before it in µs, bytes).
fn submissions() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..5_000, 1u64..6_000), 1..30)
}

/// Runs the submissions (each at its time, taking what is due first) and drains the shaper.
/// Returns (submission time, stream end offset) per accepted chunk and every delivery.
fn run(shaper: &mut Shaper, subs: &[(u64, u64)]) -> (Vec<(u64, u64)>, Vec<Delivery>) {
    let mut t = 0;
    let mut chunks = Vec::new();
    let mut out = Vec::new();
    for &(gap, bytes) in subs {
        t += gap;
        out.extend(shaper.take_due(t));
        if shaper.submit(t, bytes) > 0 {
            chunks.push((t, shaper.submitted()));
        }
    }
    while let Some(wake) = shaper.next_wake_us() {
        out.extend(shaper.take_due(wake));
    }
    (chunks, out)
}

proptest! {
    #[test]
    fn delivered_bytes_never_exceed_the_capacity_of_any_interval(
        trace in trace(), offset in 0u64..100, subs in submissions(), limit in prop::option::of(1u64..20_000),
    ) {
        let mut s = Shaper::new(Some(trace.clone())).with_offset(offset).with_queue_limit(limit);
        let (_, out) = run(&mut s, &subs);
        let mut times: Vec<u64> = out.iter().map(|d| d.at_us / 1000).collect();
        times.insert(0, 0);
        times.dedup();
        for (i, &a) in times.iter().enumerate() {
            for &b in &times[i + 1..] {
                let sent: u64 = out.iter().filter(|d| d.at_us / 1000 > a && d.at_us / 1000 <= b).map(|d| d.bytes).sum();
                prop_assert!(sent <= trace.bytes_between(offset + a, offset + b), "({a}, {b}]: {sent}");
            }
        }
    }

    #[test]
    fn every_byte_arrives_in_order_after_it_was_sent(
        trace in trace(), offset in 0u64..100, subs in submissions(), delay_ms in 0u64..50,
        limit in prop::option::of(1u64..20_000),
    ) {
        let mut s = Shaper::new(Some(trace))
            .with_offset(offset)
            .with_queue_limit(limit)
            .with_delay(std::time::Duration::from_millis(delay_ms));
        let (chunks, out) = run(&mut s, &subs);
        prop_assert!(out.windows(2).all(|w| w[0].at_us < w[1].at_us), "arrivals are ordered: {out:?}");
        let total: u64 = out.iter().map(|d| d.bytes).sum();
        prop_assert_eq!(total, s.submitted());
        // Each chunk's last byte arrives after the chunk was sent, plus the delay.
        for (sent_at, end) in chunks {
            let mut cum = 0;
            let done = out.iter().find(|d| { cum += d.bytes; cum >= end }).unwrap();
            prop_assert!(done.at_us > sent_at + delay_ms * 1000, "{sent_at} -> {done:?}");
        }
    }

    #[test]
    fn a_saturated_sender_gets_exactly_the_trace_capacity(
        trace in trace(), offset in 0u64..100, horizon_us in 0u64..400_000,
    ) {
        let mut s = Shaper::new(Some(trace.clone())).with_offset(offset);
        s.submit(0, u64::MAX / 2);
        let got: u64 = s.take_due(horizon_us).iter().map(|d| d.bytes).sum();
        prop_assert_eq!(got, trace.bytes_between(offset, offset + horizon_us / 1000));
    }

    #[test]
    fn a_sender_topping_up_a_bounded_queue_also_gets_the_capacity(
        trace in trace(), offset in 0u64..100, horizon_ms in 1u64..400, extra in 0u64..5_000,
    ) {
        // The queue holds at least one millisecond's opportunities, and the sender refills it
        // after every opportunity.
        let limit = 4 * 3 * PACKET_BYTES + extra;
        let mut s = Shaper::new(Some(trace.clone())).with_offset(offset).with_queue_limit(Some(limit));
        let mut got = 0;
        let mut t = 0;
        s.submit(0, u64::MAX);
        while let Some(wake) = s.next_wake_us() {
            if wake > horizon_ms * 1000 {
                break;
            }
            t = wake;
            got += s.take_due(t).iter().map(|d| d.bytes).sum::<u64>();
            s.submit(t, u64::MAX);
        }
        let _ = t;
        let cap = trace.bytes_between(offset, offset + horizon_ms);
        prop_assert!(got.abs_diff(cap) <= PACKET_BYTES, "{got} vs {cap}");
    }
}

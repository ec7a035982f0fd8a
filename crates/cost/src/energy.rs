//! Device energy: compute power × compute time, plus radio energy for what is sent and received.
//!
//! The radio model is the LTE power model of Huang et al., "A Close Examination of Performance
//! and Power Characteristics of 4G LTE Networks", MobiSys 2012: while transferring at throughput
//! `t` Mbit/s the radio draws `α·t + β`, with `α_up = 438.39 mW/Mbps`, `α_down = 51.97 mW/Mbps`
//! and `β = 1288.04 mW`. Sending `B` megabits at `t` Mbit/s therefore costs `α·B + β·B/t`
//! joules. The RRC tail energy after a transfer is not counted. The compute power default (3 W)
//! is an assumption for a phone SoC or single-board computer running one CPU core flat out;
//! measure yours and pass `--device-power`.

use serde::{Deserialize, Serialize};

/// Device power figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyModel {
    /// Device power while computing, in watts.
    pub compute_w: f64,
    /// Device power while waiting for the server, in watts (0: not counted).
    pub wait_w: f64,
    /// Radio base power while transferring, in watts (β).
    pub radio_base_w: f64,
    /// Radio power per Mbit/s of uplink throughput, in watts (α_up).
    pub radio_up_w_per_mbps: f64,
    /// Radio power per Mbit/s of downlink throughput, in watts (α_down).
    pub radio_down_w_per_mbps: f64,
}

impl Default for EnergyModel {
    fn default() -> Self {
        EnergyModel {
            compute_w: 3.0,
            wait_w: 0.0,
            radio_base_w: 1.28804,
            radio_up_w_per_mbps: 0.43839,
            radio_down_w_per_mbps: 0.05197,
        }
    }
}

impl EnergyModel {
    /// Joules to compute for `ms` milliseconds.
    pub fn compute_j(&self, ms: f64) -> f64 {
        self.compute_w * ms / 1e3
    }

    /// Joules to send `bytes` at `bps`.
    pub fn send_j(&self, bytes: f64, bps: f64) -> f64 {
        if bytes <= 0.0 {
            return 0.0;
        }
        let mbit = bytes * 8.0 / 1e6;
        self.radio_up_w_per_mbps * mbit + self.radio_base_w * mbit / (bps / 1e6)
    }

    /// Joules to receive `bytes` at `bps`.
    pub fn receive_j(&self, bytes: f64, bps: f64) -> f64 {
        if bytes <= 0.0 {
            return 0.0;
        }
        let mbit = bytes * 8.0 / 1e6;
        self.radio_down_w_per_mbps * mbit + self.radio_base_w * mbit / (bps / 1e6)
    }

    /// Joules spent waiting `ms` milliseconds.
    pub fn wait_j(&self, ms: f64) -> f64 {
        self.wait_w * ms / 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_megabit_at_one_mbps() {
        let e = EnergyModel::default();
        // 1 s at (α + β) watts.
        let j = e.send_j(125_000.0, 1e6);
        assert!((j - (0.43839 + 1.28804)).abs() < 1e-9, "{j}");
        assert_eq!(e.send_j(0.0, 1e6), 0.0);
        assert!((e.compute_j(1000.0) - 3.0).abs() < 1e-12);
    }
}

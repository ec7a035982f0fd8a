//! The network between tiers, and parsing of bandwidths, durations and sizes.

use serde::{Deserialize, Serialize};

use crate::CostError;

/// TCP/IPv4 headers per full segment: 40 bytes of headers per 1460-byte MSS.
pub const PACKET_OVERHEAD_RATIO: f64 = 40.0 / 1460.0;

/// Default per-message overhead in bytes: an HTTP/2 HEADERS frame after HPACK warm-up, the DATA
/// frame and gRPC length prefixes, and the Open Inference Protocol request fields (model name,
/// tensor metadata, parameters). An estimate; `cleave bench rpc` measures the real figure.
pub const DEFAULT_MESSAGE_OVERHEAD: u64 = 300;

/// A link between two tiers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Uplink (towards the server) in bits per second.
    pub up_bps: f64,
    /// Downlink (towards the device) in bits per second.
    pub down_bps: f64,
    /// Round-trip time in milliseconds (propagation and queueing, not serialization).
    pub rtt_ms: f64,
    /// Fixed bytes added to every message.
    pub overhead_bytes: u64,
}

impl Link {
    /// A symmetric link.
    pub fn symmetric(bps: f64, rtt_ms: f64) -> Link {
        Link { up_bps: bps, down_bps: bps, rtt_ms, overhead_bytes: DEFAULT_MESSAGE_OVERHEAD }
    }

    /// Bytes on the wire for a message carrying `payload` bytes.
    pub fn wire_bytes(&self, payload: u64) -> f64 {
        (payload + self.overhead_bytes) as f64 * (1.0 + PACKET_OVERHEAD_RATIO)
    }

    /// Serialization time of a message on the uplink, in ms.
    pub fn up_ms(&self, payload: u64) -> f64 {
        self.wire_bytes(payload) * 8.0 / self.up_bps * 1e3
    }

    /// Serialization time of a message on the downlink, in ms.
    pub fn down_ms(&self, payload: u64) -> f64 {
        self.wire_bytes(payload) * 8.0 / self.down_bps * 1e3
    }

    /// Request up, response down: RTT plus both serializations.
    pub fn exchange_ms(&self, up_payload: u64, down_payload: u64) -> f64 {
        self.rtt_ms + self.up_ms(up_payload) + self.down_ms(down_payload)
    }
}

/// Parses a bandwidth such as `5mbit`, `100kbit`, `1gbit`, `2.5Mbit/s`, `800kbps` into bits/s.
pub fn parse_bandwidth(s: &str) -> Result<f64, CostError> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let t = t.trim_end_matches("/s").trim_end_matches("ps");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad(s, "bandwidth", "5mbit, 100kbit, 1gbit"))?;
    let mult = match unit {
        "bit" | "b" => 1.0,
        "kbit" | "kb" | "k" => 1e3,
        "mbit" | "mb" | "m" => 1e6,
        "gbit" | "gb" | "g" => 1e9,
        _ => return Err(bad(s, "bandwidth", "5mbit, 100kbit, 1gbit")),
    };
    let bps = value * mult;
    if !(bps.is_finite() && bps > 0.0) {
        return Err(bad(s, "bandwidth", "a positive rate such as 5mbit"));
    }
    Ok(bps)
}

/// Parses a duration such as `40ms`, `0.5s`, `250us` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<f64, CostError> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad(s, "duration", "40ms, 0.5s, 250us"))?;
    let ms = match unit {
        "ms" => value,
        "s" => value * 1e3,
        "us" | "µs" => value / 1e3,
        _ => return Err(bad(s, "duration", "40ms, 0.5s, 250us")),
    };
    if !(ms.is_finite() && ms >= 0.0) {
        return Err(bad(s, "duration", "a non-negative duration"));
    }
    Ok(ms)
}

/// Parses a size such as `4MiB`, `512KiB`, `2GB`, `1000` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, CostError> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad(s, "size", "4MiB, 512KiB, 2GB"))?;
    let mult = match unit {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad(s, "size", "4MiB, 512KiB, 2GB")),
    };
    let v = value * mult;
    if !(v.is_finite() && v >= 0.0) {
        return Err(bad(s, "size", "a non-negative size"));
    }
    Ok(v.round() as u64)
}

fn bad(s: &str, what: &str, examples: &str) -> CostError {
    CostError::Parse(format!("`{s}` is not a {what} (examples: {examples})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("5mbit").unwrap(), 5e6);
        assert_eq!(parse_bandwidth("100kbit").unwrap(), 1e5);
        assert_eq!(parse_bandwidth("1gbit").unwrap(), 1e9);
        assert_eq!(parse_bandwidth("2.5Mbit/s").unwrap(), 2.5e6);
        assert_eq!(parse_bandwidth("800kbps").unwrap(), 8e5);
        assert!(parse_bandwidth("fast").is_err());
        assert!(parse_bandwidth("0mbit").is_err());
        assert!(parse_bandwidth("5 furlongs").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration_ms("40ms").unwrap(), 40.0);
        assert_eq!(parse_duration_ms("0.5s").unwrap(), 500.0);
        assert_eq!(parse_duration_ms("250us").unwrap(), 0.25);
        assert!(parse_duration_ms("40").is_err());
        assert_eq!(parse_bytes("4MiB").unwrap(), 4 * 1024 * 1024);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn transfer_times() {
        let l = Link { up_bps: 8e6, down_bps: 8e6, rtt_ms: 10.0, overhead_bytes: 0 };
        // 1 MB at 8 Mbit/s is one second, plus TCP/IP headers.
        let ms = l.up_ms(1_000_000);
        assert!((ms - 1000.0 * (1.0 + PACKET_OVERHEAD_RATIO)).abs() < 1e-6);
        assert!(l.exchange_ms(0, 0) >= 10.0);
    }
}

//! # cleave-bench
//!
//! The measurements behind every speed claim cleave makes. Each `cleave bench …` command is a
//! function here returning a serializable report; the CLI prints it and writes it as JSON.
//! Timings are medians of runs alternated side by side in one process, because the machines
//! this runs on are shared and noisy: ratios measured together are what is comparable.

pub mod cgroup;
pub mod chaos;
pub mod device_proc;
pub mod edge;
pub mod engines;
pub mod fleet;
pub mod load;
pub mod predict;
pub mod rpc;
pub mod split;
pub mod stats;
pub mod trace;

/// A short description of the machine, for reports.
pub fn host() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

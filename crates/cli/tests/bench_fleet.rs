//! `cleave bench fleet` end to end, briefly: 8 simulated devices for a few seconds per strategy
//! against real `cleave serve` processes, with the built-in model and generated traces. Checks the
//! JSON's shape and sanity only: no performance ratios (CI machines are noisy; the figures are in
//! docs/FLEET.md).

use std::process::Command;

use serde_json::Value;

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is not a count: {v}"))
}

fn run_fleet(extra: &[&str]) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fleet.json");
    let t0 = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(["bench", "fleet", "--devices", "8", "--seconds", "3", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}\n{stdout}");
    eprintln!("{stdout}\n(took {:.1} s)", t0.elapsed().as_secs_f64());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (v.as_array().expect("a list").clone(), stdout.into_owned())
}

#[test]
fn every_strategy_answers_every_frame() {
    let (results, stdout) = run_fleet(&[]);
    assert!(stdout.contains("strategy") && stdout.contains("p99 ms"), "a table: {stdout}");
    let names: Vec<&str> = results.iter().map(|r| r["strategy"].as_str().unwrap()).collect();
    assert_eq!(names, ["all-local", "all-offload", "independent", "coordinated"]);
    for r in &results {
        assert_eq!(u(r, "devices"), 8);
        let (released, answered) = (u(r, "frames_released"), u(r, "frames_answered"));
        // 8 devices at 5 fps for 3 s.
        assert_eq!(released, 120, "{r}");
        assert_eq!(answered + u(r, "frames_unanswered"), released, "{r}");
        let (p50, p99) = (f(r, "p50_ms"), f(r, "p99_ms"));
        assert!(0.0 < p50 && p50 <= p99, "{r}");
        assert!(f(r, "throughput_fps") > 0.0, "{r}");
        let jain = f(r, "jain");
        assert!((0.125..=1.0 + 1e-9).contains(&jain), "{r}");
        assert!(f(r, "edge_cpu_cores") >= 0.0, "{r}");
    }
    let local = &results[0];
    assert_eq!(u(local, "bytes_up"), 0, "all-local sends nothing: {local}");
    assert_eq!(f(local, "offloaded_share"), 0.0);
    let offload = &results[1];
    assert_eq!(f(offload, "offloaded_share"), 1.0, "{offload}");
    assert!(u(offload, "bytes_up") > 0);
    assert_eq!(u(offload, "fallbacks"), 0, "the edge answered every request: {offload}");
}

#[test]
fn real_traces_when_present() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces");
    if !dir.join("ATT-LTE-driving-2016.up").exists() {
        eprintln!("skipped: no shared traces at {}", dir.display());
        return;
    }
    let (results, _) = run_fleet(&["--trace-dir", dir.to_str().unwrap(), "--strategies", "independent,coordinated"]);
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(u(r, "frames_answered") + u(r, "frames_unanswered"), u(r, "frames_released"), "{r}");
    }
}

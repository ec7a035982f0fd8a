//! `cleave bench load` end to end, briefly: a real `cleave serve` child process and a few
//! devices for a few seconds, with the built-in tiny model. No timing assertions: on a shared
//! 2-core machine timings say little; the acceptance figures (64 devices, 60 s) are in
//! docs/LOAD.md.

use std::process::Command;

use serde_json::Value;

fn run_load(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let t0 = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(["bench", "load"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}\n{stdout}");
    eprintln!("{stdout}\n(took {:.1} s)", t0.elapsed().as_secs_f64());
    assert!(stdout.contains("RESOURCE_EXHAUSTED") && stdout.contains("edge RSS"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path} is not a count: {v}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("{path} is not a number: {v}"))
}

/// What holds of every report.
fn check_sane(v: &Value, devices: u64, seconds: f64) {
    assert_eq!(u(v, "/devices"), devices);
    assert_eq!(f(v, "/seconds"), seconds);
    let (ok, re, err) = (u(v, "/ok"), u(v, "/resource_exhausted"), u(v, "/errors"));
    assert_eq!(u(v, "/requests"), ok + re + err, "every request is counted once");
    assert!(ok > 0, "some requests succeeded: {v}");
    assert_eq!(err, 0, "no errors but refusals: {}", v["errors_by_code"]);
    assert!(f(v, "/throughput_ok_per_s") > 0.0);
    assert!(f(v, "/edge_cpu_s") > 0.0 && f(v, "/devices_cpu_s") > 0.0, "CPU time of both processes");
    let (p50, p99, max) = (f(v, "/latency/p50_ms"), f(v, "/latency/p99_ms"), f(v, "/latency/max_ms"));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{}", v["latency"]);
    // The edge's memory is its own process's: tens of MiB, not this test's.
    let m = &v["memory"];
    let (idle, r, end, peak) = (u(m, "/idle_kib"), u(m, "/ref_kib"), u(m, "/end_kib"), u(m, "/peak_kib"));
    assert!(idle > 1024 && r > 1024 && end > 1024, "{m}");
    assert!(peak >= r.max(end), "VmHWM is the peak: {m}");
    assert_eq!(f(m, "/ref_at_s"), seconds / 2.0, "a run shorter than 20 s takes its reference at half time");
    assert!((f(m, "/end_over_ref") - end as f64 / r as f64).abs() < 1e-9);
    assert!(m["within_10pct"].is_boolean());
    // The queue gauge was read, and the server kept its bound.
    let q = &v["queue"];
    assert!(u(q, "/samples") > 0, "{q}");
    assert!(q["max_depth"].as_i64().unwrap() <= q["bound"].as_i64().unwrap(), "{q}");
    assert_eq!(q["bounded"], true);
    // The edge's own counters agree with what the devices saw.
    assert_eq!(u(v, "/server/success"), ok + u(v, "/warmup_requests"), "{}", v["server"]);
    assert!(u(v, "/server/failure_rejected") >= re);
    let timeline = v["timeline"].as_array().unwrap();
    assert_eq!(timeline.len() as f64, seconds.ceil());
    assert_eq!(timeline.iter().map(|w| u(w, "/ok")).sum::<u64>(), ok);
}

#[test]
fn closed_loop_reports_throughput_latency_memory_and_queue() {
    let v = run_load(&["--devices", "4", "--seconds", "3"]);
    check_sane(&v, 4, 3.0);
    assert_eq!(v["mode"], "closed-loop");
    assert!(v["cut"].as_u64().unwrap() > 0, "a cut inside the model by default");
    assert_eq!(v["codec"], "int8");
    assert!(u(&v, "/request_bytes") > 0);
}

#[test]
fn fixed_rate_over_a_tiny_queue_is_refused_not_queued() {
    // 6 devices × 400/s against a queue of 1: the edge must refuse, never queue past 1.
    let v = run_load(&["--devices", "6", "--seconds", "2", "--rate-per-device", "400", "--queue-bound", "1"]);
    check_sane(&v, 6, 2.0);
    assert_eq!(v["mode"], "fixed-rate");
    assert_eq!(f(&v, "/rate_per_device_hz"), 400.0);
    assert_eq!(v["queue"]["bound"], 1);
    // Whether refusals happen depends on this machine's speed; when they do, the hint came along.
    if u(&v, "/resource_exhausted") > 0 {
        assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
    }
}

#[test]
fn bench_load_rejects_bad_arguments_clearly() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cleave")).args(["bench", "load"]).args(args).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run(&["--devices", "0"]).contains("--devices must be at least 1"));
    assert!(run(&["--seconds", "0"]).contains("--seconds 0 must be a positive number"));
    let e = run(&["--cut", "999"]);
    assert!(e.contains("--cut 999 leaves nothing for the edge"), "{e}");
    let e = run(&["--model", "/nonexistent.onnx"]);
    assert!(e.contains("cannot read model /nonexistent.onnx"), "{e}");
}

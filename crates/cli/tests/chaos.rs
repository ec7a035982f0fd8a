//! The chaos test: one device streams 2,000 frames to two real `cleave serve` replicas while a
//! nemesis kills -9 and restarts them, blackholes their links, resets their connections and
//! partitions the device from both.
//! The history check (done by `cleave bench chaos`, asserted here): every frame has exactly one
//! result, each correct (remote: the tail on what was sent, boundary within the codec's bound;
//! degraded: the whole model locally), none after its deadline. About a minute.

use std::process::Command;

use serde_json::Value;

#[test]
fn no_frame_is_lost_duplicated_late_or_wrong_under_kills_blackholes_and_resets() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("chaos.json");
    let o = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(["bench", "chaos", "--frames", "2000", "--fps", "50", "--seed", "3", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}\n{stdout}");
    eprintln!("{stderr}\n{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "lost",
        "duplicated",
        "degraded",
        "detection_p50_ms",
        "detection_p99_ms",
        "failover_p50_ms",
        "failover_p99_ms",
        "frames",
        "throughput_fps",
    ] {
        assert!(v.get(key).is_some(), "the report has no `{key}`: {v}");
    }
    assert_eq!(v["frames"], 2000);
    assert_eq!(v["lost"], 0, "{stdout}");
    assert_eq!(v["duplicated"], 0, "{stdout}");
    assert_eq!(v["late"], 0, "{stdout}");
    assert_eq!(v["wrong"], 0, "{stdout}");
    // The nemesis really struck, with every kind of fault, and the device noticed.
    let faults = v["faults"].as_array().unwrap();
    for kind in ["kill", "blackhole", "reset", "partition"] {
        assert!(faults.iter().any(|f| f["kind"] == kind), "no {kind} fault: {stdout}");
    }
    let detected = faults.iter().filter(|f| f["detected_after_ms"].is_number()).count();
    let detectable = faults.iter().filter(|f| f["kind"] != "reset" && f["already_down"] == false).count();
    assert_eq!(detected, detectable, "a kill or blackhole went unnoticed: {stdout}");
    // Cut off from both replicas, the device answered by itself.
    assert!(v["degraded"].as_u64().unwrap() > 0, "{stdout}");
    // Both replicas served frames (the device failed over and came back).
    let by = v["remote_by_replica"].as_array().unwrap();
    assert!(by.iter().all(|n| n.as_u64().unwrap() > 0), "{stdout}");
}

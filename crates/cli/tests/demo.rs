//! `cleave demo`, the README's main command: it must run from the binary alone (no flags, no
//! files) and report every strategy. Run here with fewer frames to keep the test short; the
//! defaults differ only in counts.

use std::process::Command;

use serde_json::Value;

#[test]
fn demo_runs_from_the_binary_alone_and_reports_every_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("demo.json");
    let plot = dir.path().join("demo.png");
    // A directory with nothing in it: the demo needs no file beyond the binary.
    let empty = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .current_dir(empty.path())
        .args(["demo", "--frames", "8", "--fps", "20", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    eprintln!("{stdout}");
    assert!(stdout.contains("digits CNN"), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|s| s["strategy"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["device-only", "offload-raw-fp32", "offload-raw-u8", "offload-jpeg", "best-static", "adaptive", "oracle"]
    );
    for s in v.as_array().unwrap() {
        assert_eq!(s["frames"], 8, "{}", s["strategy"]);
    }
    // The 28×28 digits travel as 784 bytes at 8 bits.
    let u8_bytes =
        v.as_array().unwrap().iter().find(|s| s["strategy"] == "offload-raw-u8").unwrap()["bytes_up"].clone();
    assert_eq!(u8_bytes, 8 * 784);
    assert!(std::fs::metadata(&plot).unwrap().len() > 10_000, "a plot was drawn");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "nothing written outside the given paths");
}

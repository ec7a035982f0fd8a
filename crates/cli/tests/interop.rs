//! Triton's own Python client (`tritonclient[grpc]`) against `cleave serve`: runs
//! tests/interop/triton_client.py. CI sets CLEAVE_REQUIRE_TRITONCLIENT=1 so a missing client
//! fails instead of skipping.

use std::path::Path;
use std::process::Command;

#[test]
fn tritonclient_talks_to_cleave_serve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let require = std::env::var("CLEAVE_REQUIRE_TRITONCLIENT").is_ok_and(|v| v == "1");
    let probe = Command::new("python3").args(["-c", "import tritonclient.grpc, numpy"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(!require, "CLEAVE_REQUIRE_TRITONCLIENT=1 but python3 cannot import tritonclient.grpc and numpy");
        eprintln!("SKIP: python3 with tritonclient is not available (pip install 'tritonclient[grpc]' numpy)");
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("tests/interop/triton_client.py"))
        .args(["--cleave", env!("CARGO_BIN_EXE_cleave")])
        .arg("--model")
        .arg(root.join("models/tiny_resnet.onnx"));
    if let Ok(shared) = cleave_testkit::shared_dir() {
        cmd.arg("--shared").arg(shared);
    }
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "tritonclient interop failed:\n{out}");
    assert!(out.contains("all checks passed"), "{out}");
}

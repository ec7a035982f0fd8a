//! End to end: `cleave serve` and `cleave run` as two real processes on loopback.
//!
//! The device runs the head, encodes the boundary tensors, sends them over gRPC; the server runs
//! the tail. `cleave run --check` also computes the local references, so each frame reports how
//! far the remote answer is from the whole model run locally.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn cleave() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cleave"))
}

/// A `cleave serve` process on free ports, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    grpc: String,
    metrics: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = cleave()
            .args(["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cleave serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("listening ") => break l,
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait().unwrap();
                    panic!("cleave serve exited ({status}) before listening");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .to_owned()
        };
        Server { grpc: field("grpc="), metrics: field("metrics="), child }
    }

    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// SIGTERM, then the exit status (a drained server exits 0).
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("cleave serve did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cleave run … --check --json` and returns its JSON.
fn run(model: &Path, name: &str, edge: &str, cut: usize, codec: &str, extra: &[&str]) -> Value {
    let out = cleave()
        .arg("run")
        .arg(model)
        .args(["--model-name", name, "--edge", edge, "--cut", &cut.to_string(), "--codec", codec])
        .args(["--frames", "3", "--check", "--json", "--timeout", "60s"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleave run failed ({}): {stderr}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("cleave run --json: {e}; stderr: {stderr}"))
}

fn num_cuts(model: &Path, extra: &[&str]) -> usize {
    let out = cleave().arg("inspect").arg(model).arg("--json").args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["model"]["num_cuts"].as_u64().unwrap() as usize
}

/// Every frame came back from the server, and matches the local references: the server's tail
/// equals the local tail on what was sent (≤ 1e-5), the boundary stayed within the codec's bound,
/// and at fp32 the answer equals the whole model's (≤ 1e-5).
fn assert_frames(v: &Value, what: &str) -> f64 {
    let frames = v["frames"].as_array().unwrap();
    assert!(!frames.is_empty());
    let mut worst_whole: f64 = 0.0;
    for f in frames {
        assert_eq!(f["status"], "remote", "{what}: {f}");
        let c = &f["check"];
        let tail = c["vs_local_tail"].as_f64().unwrap();
        let whole = c["vs_whole"].as_f64().unwrap();
        let bound = c["boundary_error_vs_bound"].as_f64().unwrap();
        assert!(tail <= 1e-5, "{what}: the server's tail differs from the local tail by {tail:e}");
        assert!(bound <= 1.0, "{what}: boundary error is {bound}× the codec's bound");
        if v["codec"] == "fp32" {
            assert!(whole <= 1e-5, "{what}: fp32 answer differs from the whole model by {whole:e}");
        }
        assert!(f["bytes_up"].as_u64().unwrap() > 0, "{what}: nothing sent");
        worst_whole = worst_whole.max(whole);
    }
    worst_whole
}

fn spread_cuts(n: usize) -> [usize; 3] {
    [n / 4, n / 2, 3 * n / 4]
}

#[test]
fn serve_and_run_on_the_shipped_model() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx");
    let server = Server::start(&["--model", &format!("tiny={}", model.display())]);
    for cut in spread_cuts(num_cuts(&model, &[])) {
        for codec in ["fp32", "int8", "int4"] {
            let v = run(&model, "tiny", &server.grpc, cut, codec, &[]);
            assert_frames(&v, &format!("tiny cut {cut} {codec}"));
        }
    }
    let metrics = server.metrics();
    assert!(
        metrics.lines().any(|l| l.starts_with("nv_inference_request_success{model=\"tiny\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(server.stop().success(), "a drained server exits 0");
}

#[test]
fn serve_and_run_on_shared_models() {
    let Some(resnet_light) = cleave_testkit::shared_file("models/light/light_resnet50.onnx") else { return };
    // The light models' synthetic weights give a constant softmax (every class 0.001), on which any
    // error would vanish: serve the architecture with seeded random weights and its logits exposed
    // as a second output, so the comparison sees the tail's arithmetic.
    let dir = tempfile::tempdir().unwrap();
    let resnet = dir.path().join("resnet50_random.onnx");
    let g = cleave_testkit::load(&resnet_light, &cleave_graph::InputShapes::none(), true);
    std::fs::write(&resnet, prost::Message::encode_to_vec(g.proto())).unwrap();
    let Some(cls) = cleave_testkit::shared_file("models/ch_ppocr_mobile_v2.0_cls_infer.onnx") else { return };
    let cls_shape = ["--shape", "x=1,3,48,192"];
    let server = Server::start(&[
        "--model",
        &format!("resnet={}", resnet.display()),
        "--model",
        &format!("cls={}", cls.display()),
        cls_shape[0],
        cls_shape[1],
    ]);
    for (model, name, extra) in [(&resnet, "resnet", &[][..]), (&cls, "cls", &cls_shape[..])] {
        for cut in spread_cuts(num_cuts(model, extra)) {
            for codec in ["fp32", "int8"] {
                let v = run(model, name, &server.grpc, cut, codec, extra);
                let worst = assert_frames(&v, &format!("{name} cut {cut} {codec}"));
                println!("{name} cut {cut} {codec}: worst error vs whole model {worst:.2e}");
            }
        }
    }
    let metrics = server.metrics();
    for name in ["resnet", "cls"] {
        let prefix = format!("nv_inference_request_success{{model=\"{name}\"");
        assert!(metrics.lines().any(|l| l.starts_with(&prefix) && !l.ends_with(" 0")), "{metrics}");
    }
    assert!(server.stop().success(), "a drained server exits 0");
}

/// `cleave run --cut adaptive`: every frame is answered (by the server or, when the planner says
/// so, by the device; never by a fallback), each prints its line, and `--records` holds one
/// parsable JSON object per frame with the estimate the decision used and the chosen cut.
#[test]
fn adaptive_run_answers_every_frame_and_writes_records() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx");
    let server = Server::start(&["--model", &format!("tiny={}", model.display())]);
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("frames.jsonl");
    let adaptive = ["--model-name", "tiny", "--edge", &server.grpc, "--cut", "adaptive", "--timeout", "60s"];
    // A slow device and a fast server: offloading is the plan on loopback.
    let slow = ["--device-slowdown", "4", "--server-speedup", "4"];
    let out = cleave()
        .arg("run")
        .arg(&model)
        .args(adaptive)
        .args(slow)
        .args(["--frames", "10", "--fps", "50", "--records"])
        .arg(&records)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleave run --cut adaptive failed ({}): {stderr}", out.status);
    let frame_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("frame ")).collect();
    assert_eq!(frame_lines.len(), 10, "{stdout}");
    assert!(
        frame_lines.iter().all(|l| l.contains(" cut ") && l.contains("estimate") && l.contains("Mbit/s")),
        "{stdout}"
    );
    assert!(stdout.contains("10 frames: "), "{stdout}");
    // No frame fell back for a failure. A race the device's own tail won (it starts with the
    // request; `--hedge eager`, the default) is timing, not failure: on this tiny model the
    // local tail takes a few ms, and a loaded test machine may answer later than that.
    let won_race = |e: &str| e.starts_with("raced") || e.starts_with("hedged");
    let failed: Vec<&&str> =
        frame_lines.iter().filter(|l| l.contains("LOCAL") && !l.contains("raced") && !l.contains("hedged")).collect();
    assert!(failed.is_empty(), "{stdout}");

    let text = std::fs::read_to_string(&records).unwrap();
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("records line `{l}`: {e}"))).collect();
    assert_eq!(lines.len(), 10, "{text}");
    let last_cut = num_cuts(&model, &[]) as u64 - 1;
    for (k, r) in lines.iter().enumerate() {
        assert_eq!(r["frame"], k as u64, "{r}");
        let cut = r["cut"].as_u64().unwrap();
        assert!(cut <= last_cut, "{r}");
        match r["status"].as_str().unwrap() {
            "remote" => assert!(cut < last_cut && r["codec"].is_string() && r["bytes_up"].as_u64() > Some(0), "{r}"),
            "device" => assert_eq!(cut, last_cut, "{r}"),
            "local-fallback" if r["error"].as_str().is_some_and(won_race) => {}
            other => panic!("frame {k} was answered by `{other}`: {r}"),
        }
        assert!(r["estimate"]["up_bps"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["estimate"]["measured"].as_bool().unwrap(), "the bootstrap probe measured the link: {r}");
        assert!(r["start_unix_ms"].as_f64().unwrap() > 1.6e12, "{r}");
        assert!(r["total_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Frames released at 50/s: releases 20 ms apart.
    let releases: Vec<f64> = lines.iter().map(|r| r["release_ms"].as_f64().unwrap()).collect();
    assert!(releases.windows(2).all(|w| (w[1] - w[0] - 20.0).abs() < 0.5), "{releases:?}");

    // --json carries the same records.
    let out =
        cleave().arg("run").arg(&model).args(adaptive).args(slow).args(["--frames", "3", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["frames"], 3, "{v}");
    assert_eq!(v["frames"].as_array().unwrap().len(), 3, "{v}");
    for f in v["frames"].as_array().unwrap() {
        assert!(f["status"] != "local-fallback" || f["error"].as_str().is_some_and(won_race), "{f}");
    }

    // Flags of other modes are refused, not ignored.
    for (args, message) in [
        (&["--cut", "adaptive", "--check"][..], "--check is not supported with --cut adaptive"),
        (&["--cut", "3", "--records", "r.jsonl"][..], "--records applies to --cut adaptive only"),
        (&["--cut", "adaptive", "--device-slowdown", "0.5"][..], "--device-slowdown 0.5 must be a finite number ≥ 1"),
        (&["--cut", "3", "--fleet"][..], "--fleet applies to --cut adaptive only"),
    ] {
        let out = cleave()
            .arg("run")
            .arg(&model)
            .args(["--model-name", "tiny", "--edge", &server.grpc])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    assert!(server.stop().success(), "a drained server exits 0");
}

#[test]
fn run_against_a_dead_server_is_a_clean_error() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx");
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out =
        cleave().arg("run").arg(&model).args(["--edge", &format!("127.0.0.1:{port}"), "--cut", "3"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: ") && err.contains("cannot reach"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--edge A --edge B`: a dead first server is skipped, frames go to the second; when the
/// second is killed mid-run, frames complete locally (degraded), each exactly once.
#[test]
fn run_fails_over_across_edges_and_degrades_when_all_are_gone() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut server = Server::start(&["--model", &format!("tiny={}", model.display())]);
    let child = cleave()
        .arg("run")
        .arg(&model)
        .args(["--model-name", "tiny", "--edge", &dead, "--edge", &server.grpc, "--cut", "3", "--codec", "int8"])
        .args(["--frames", "60", "--fps", "20", "--timeout", "2s", "--check", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the live server about a second in (20 of the 60 frames).
    std::thread::sleep(Duration::from_millis(1000));
    let _ = server.child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cleave run failed ({}): {stderr}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let frames = v["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 60);
    for (k, f) in frames.iter().enumerate() {
        assert_eq!(f["frame"], k);
        let check = &f["check"];
        match f["status"].as_str().unwrap() {
            "remote" => {
                assert_eq!(f["endpoint"].as_str(), Some(server.grpc.as_str()), "{f}");
                assert!(check["vs_local_tail"].as_f64().unwrap() < 1e-4, "{f}");
            }
            "local-fallback" => assert!(check["vs_whole"].as_f64().unwrap() < 1e-5, "{f}"),
            s => panic!("frame {k}: unexpected status {s}: {f}"),
        }
    }
    let first = &frames[0];
    assert_eq!(first["status"], "remote", "the dead first edge is skipped: {first}");
    let last = frames.last().unwrap();
    assert_eq!(last["status"], "local-fallback", "with every edge gone the device answers: {last}");
}

/// The committed early-exit digits model and its held-out digits.
fn digits() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/digits");
    (root.join("digits_exits.onnx"), root.join("test.npz"))
}

/// Held-out digit `i` as a model input `.npy`.
fn digit_npy(data: &Path, i: usize, dir: &Path) -> PathBuf {
    let set = cleave_data::Labelled::from_npz(std::fs::File::open(data).unwrap()).unwrap();
    let x = set.sample(i, &[1, 1, 28, 28], cleave_data::DatumType::F32).unwrap();
    let path = dir.join(format!("digit{i}.npy"));
    let mut f = std::fs::File::create(&path).unwrap();
    cleave_data::npy::write(&mut f, &x).unwrap();
    path
}

/// The accuracy a plan loses according to the calibration file (exit policy + cut × codec).
fn calibrated_drop(cal: &Value, v: &Value, last_cut: usize) -> f64 {
    let base = cal["baseline_accuracy"].as_f64().unwrap();
    let mut drop = 0.0;
    if let Some(exit) = v["exit"].as_object() {
        let e = cal["exits"].as_array().unwrap().iter().find(|e| e["name"] == exit["name"]).unwrap();
        let p = e["thresholds"].as_array().unwrap().iter().find(|p| p["threshold"] == exit["threshold"]).unwrap();
        drop += (base - p["accuracy"].as_f64().unwrap()).max(0.0);
    }
    let cut = v["cut"].as_u64().unwrap() as usize;
    let codec = v["codec"].as_str().unwrap();
    if cut < last_cut && codec != "fp32" {
        let e = cal["cuts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["cut"] == cut && e["codec"] == codec)
            .unwrap_or_else(|| panic!("the planner chose cut {cut} {codec}, which was not calibrated"));
        drop += (base - e["accuracy"].as_f64().unwrap()).max(0.0);
    }
    drop
}

#[test]
fn digits_auto_plan_honours_the_accuracy_budget_and_exits_early() {
    let (model, data) = digits();
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.json");
    let out = cleave()
        .arg("calibrate")
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .args(["--limit", "300", "--cuts", "0,3,7,11,15,19", "--quiet", "-o"])
        .arg(&calib)
        .output()
        .unwrap();
    assert!(out.status.success(), "calibrate: {}", String::from_utf8_lossy(&out.stderr));
    let cal: Value = serde_json::from_str(&std::fs::read_to_string(&calib).unwrap()).unwrap();
    assert_eq!(cal["samples"], 300);
    let exits: Vec<&str> = cal["exits"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(exits, ["exit_1", "exit_2"]);
    let last_cut = num_cuts(&model, &[]) - 1;

    let server = Server::start(&["--model", &format!("digits={}", model.display())]);
    let input = digit_npy(&data, 7, dir.path());
    for (budget, limit) in [("0.5%", 0.005), ("0%", 0.0), ("3%", 0.03)] {
        let out = cleave()
            .arg("run")
            .arg(&model)
            .args(["--model-name", "digits", "--edge", &server.grpc, "--cut", "auto", "--server-speedup", "4"])
            .arg("--calibration")
            .arg(&calib)
            .args(["--max-accuracy-drop", budget, "--frames", "4", "--check", "--json", "--timeout", "60s", "--input"])
            .arg(&input)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{budget}: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let drop = calibrated_drop(&cal, &v, last_cut);
        eprintln!("budget {budget}: {} (calibrated drop {drop})", v["decision"]);
        assert!(drop <= limit + 1e-12, "budget {budget}: the plan loses {drop} ({})", v["decision"]);
        for f in v["frames"].as_array().unwrap() {
            let status = f["status"].as_str().unwrap();
            let check = &f["check"];
            match status {
                "early-exit" => {
                    assert_eq!(f["bytes_up"], 0, "{f}");
                    let t = v["exit"]["threshold"].as_f64().unwrap();
                    assert!(f["exit_confidence"].as_f64().unwrap() >= t, "{f}");
                    assert!(check["vs_whole"].as_f64().unwrap() <= 1e-5, "{f}");
                }
                "remote" => assert!(check["vs_local_tail"].as_f64().unwrap() <= 1e-5, "{f}"),
                "device" => assert!(check["vs_whole"].as_f64().unwrap() <= 1e-5, "{f}"),
                other => panic!("budget {budget}: frame {other}: {f}"),
            }
        }
    }

    // A fixed exit policy: a clear digit is answered at exit_1, with nothing sent.
    let v = run(
        &model,
        "digits",
        &server.grpc,
        19,
        "int8",
        &["--exit", "exit_1", "--exit-threshold", "0.5", "--input", input.to_str().unwrap()],
    );
    for f in v["frames"].as_array().unwrap() {
        assert_eq!(f["status"], "early-exit", "{f}");
        assert_eq!(f["bytes_up"], 0);
        assert!(f["check"]["vs_whole"].as_f64().unwrap() <= 1e-5, "{f}");
    }
    // An exit after the cut cannot be used: a clear error.
    let out = cleave()
        .arg("run")
        .arg(&model)
        .args([
            "--model-name",
            "digits",
            "--edge",
            &server.grpc,
            "--cut",
            "3",
            "--exit",
            "exit_2",
            "--exit-threshold",
            "0.9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit `exit_2` is computed after cut"), "{stderr}");
    assert!(server.stop().success());
}

/// `cleave run --cut adaptive --fleet` against `cleave serve --coordinate`: the device reports
/// itself, and from its second frame on every record names the edge's recommendation and
/// whether the device followed it (the same run without `--fleet` has none).
#[test]
fn a_fleet_device_receives_and_records_the_edges_plan() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx");
    let server = Server::start(&["--model", &format!("tiny={}", model.display()), "--coordinate"]);
    let dir = tempfile::tempdir().unwrap();
    let run = |fleet: bool, name: &str| -> Vec<Value> {
        let records = dir.path().join(name);
        let mut cmd = cleave();
        cmd.arg("run").arg(&model).args(["--model-name", "tiny", "--edge", &server.grpc, "--cut", "adaptive"]);
        cmd.args(["--device-slowdown", "4", "--server-speedup", "4", "--frames", "8", "--fps", "50", "--records"]);
        cmd.arg(&records);
        if fleet {
            cmd.arg("--fleet");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&records).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let lines = run(true, "fleet.jsonl");
    assert_eq!(lines.len(), 8);
    for r in &lines[1..] {
        let plan = r["fleet_plan"].as_str().unwrap_or_else(|| panic!("no recommendation: {r}"));
        let (cut, codec) = plan.split_once(':').unwrap();
        assert!(cut.parse::<u64>().is_ok() && !codec.is_empty(), "{r}");
        assert!(r["followed"].is_boolean(), "{r}");
        if r["followed"] == true {
            assert_eq!(r["cut"].as_u64(), cut.parse::<u64>().ok(), "{r}");
        }
    }
    let alone = run(false, "alone.jsonl");
    assert!(alone.iter().all(|r| r.get("fleet_plan").is_none() && r.get("followed").is_none()), "{alone:?}");
    assert!(server.stop().success());
}

//! A server cleave did not write: MLServer (`pip install 'mlserver==1.7.*' onnxruntime`) serves
//! the tails `cleave export --format mlserver` writes, with the small onnxruntime runtime in
//! tests/interop/mlserver/, and `cleave run --edge-kind oip` offloads to it. The final outputs
//! must equal local whole-model inference: within 1e-5 (relative) at fp32; at uint8, the
//! boundary within the int8 codec's bound and the answer within 1e-5 of the local tail on the
//! dequantized boundary. The built-in model also runs from the export alone (no MODEL).
//!
//! MLServer is found as `$CLEAVE_MLSERVER` (the `mlserver` script, e.g. in a venv; .ci/run makes
//! one), else `mlserver` on PATH. CI sets CLEAVE_REQUIRE_MLSERVER=1 so a missing MLServer fails
//! instead of skipping. The shared models skip with a reason when ../shared is absent; the
//! built-in tiny resnet always runs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cleave_graph::{InputShapes, ModelGraph};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An MLServer process, killed when dropped.
struct MlServer {
    child: Child,
    grpc: u16,
    http: u16,
    log: PathBuf,
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MlServer {
    fn start(bin: &Path, repo: &Path) -> MlServer {
        let (grpc, http, metrics) = (free_port(), free_port(), free_port());
        let log = repo.join("mlserver.log");
        let child = Command::new(bin)
            .arg("start")
            .arg(repo)
            .env("MLSERVER_GRPC_PORT", grpc.to_string())
            .env("MLSERVER_HTTP_PORT", http.to_string())
            .env("MLSERVER_METRICS_PORT", metrics.to_string())
            .env("MLSERVER_HOST", "127.0.0.1")
            // Inference in the server process itself: no worker pool to start or to leak.
            .env("MLSERVER_PARALLEL_WORKERS", "0")
            .env("MLSERVER_GRPC_MAX_MESSAGE_LENGTH", (64 << 20).to_string())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("mlserver starts");
        MlServer { child, grpc, http, log }
    }

    /// Waits until MLServer says every model is ready (REST `/v2/health/ready`).
    fn wait_ready(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mlserver exited ({status}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http)) {
                let _ = s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                if r.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("mlserver not ready after {timeout:?}:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }
}

fn mlserver_bin() -> Option<PathBuf> {
    let require = std::env::var("CLEAVE_REQUIRE_MLSERVER").is_ok_and(|v| v == "1");
    let bin = std::env::var_os("CLEAVE_MLSERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("mlserver"));
    let ok = Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!require, "CLEAVE_REQUIRE_MLSERVER=1 but `{} --version` fails", bin.display());
        eprintln!(
            "SKIP: MLServer is not available (python3 -m venv v && v/bin/pip install 'mlserver==1.7.*' onnxruntime; CLEAVE_MLSERVER=v/bin/mlserver)"
        );
        return None;
    }
    Some(bin)
}

/// Two single-tensor cuts, about a third and two thirds of the way through.
fn two_cuts(path: &Path, shape: Option<&str>) -> Vec<usize> {
    let mut shapes = InputShapes::none();
    if let Some(s) = shape {
        let (n, d) = InputShapes::parse_one(s).unwrap();
        shapes = shapes.with(n, d);
    }
    let g = ModelGraph::from_bytes(&std::fs::read(path).unwrap(), &shapes).unwrap();
    let cuts = g.cuts();
    let last = g.last_cut();
    let pick = |target: usize| {
        cuts.iter()
            .filter(|c| c.index > 0 && c.index < last && c.tensors.len() == 1)
            .min_by_key(|c| c.index.abs_diff(target))
            .map(|c| c.index)
            .expect("a single-tensor cut")
    };
    let (a, b) = (pick(last / 3), pick(2 * last / 3));
    assert_ne!(a, b);
    vec![a, b]
}

#[test]
fn cleave_run_offloads_to_mlserver() {
    let Some(bin) = mlserver_bin() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = tempfile::tempdir().unwrap();
    let models_dir = tempfile::tempdir().unwrap();
    // (name, file, --shape)
    let mut models: Vec<(String, PathBuf, Option<&str>)> =
        vec![("tiny_resnet".into(), root.join("models/tiny_resnet.onnx"), None)];
    if let Some(p) = cleave_testkit::shared_file("models/light/light_resnet50.onnx") {
        // Its synthetic weights give a constant softmax, on which any error would vanish: the
        // architecture with seeded random weights (as e2e.rs does).
        let g = cleave_testkit::load(&p, &InputShapes::none(), true);
        let random = models_dir.path().join("resnet50_light_random.onnx");
        std::fs::write(&random, prost::Message::encode_to_vec(g.proto())).unwrap();
        models.push(("resnet50_light".into(), random, None));
    }
    if let Some(p) = cleave_testkit::shared_file("models/ch_ppocr_mobile_v2.0_cls_infer.onnx") {
        models.push(("ppocr_cls".into(), p, Some("x=1,3,48,192")));
    }
    let mut plan = vec![];
    for (name, path, shape) in &models {
        let cuts = two_cuts(path, *shape);
        let dir = repo.path().join(name);
        let cut_list = cuts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cleave"));
        cmd.arg("export").arg(path);
        if let Some(s) = shape {
            cmd.args(["--shape", s]);
        }
        // fp16 too for the built-in model (the shared ones keep the test short).
        let dtypes = if name == "tiny_resnet" { "fp32,fp16,uint8" } else { "fp32,uint8" };
        let o = cmd
            .args(["--cuts", &cut_list, "--dtypes", dtypes, "--format", "mlserver", "--name", name, "-o"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "export {name}: {}", String::from_utf8_lossy(&o.stderr));
        plan.push((name.clone(), path.clone(), *shape, dir, cuts));
    }
    // A copy of a tail whose runtime reports no times: the device must infer them.
    let (tiny_dir, tiny_cut) = (plan[0].3.clone(), plan[0].4[0]);
    let quiet = repo.path().join("quiet").join("tiny_quiet");
    std::fs::create_dir_all(&quiet).unwrap();
    let src = tiny_dir.join(format!("tiny_resnet_tail_c{tiny_cut}"));
    for f in ["model.onnx", "cleave_onnx_runtime.py"] {
        std::fs::copy(src.join(f), quiet.join(f)).unwrap();
    }
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model-settings.json")).unwrap()).unwrap();
    settings["name"] = "tiny_quiet".into();
    settings["parameters"]["extra"] = serde_json::json!({"report_times": false});
    std::fs::write(quiet.join("model-settings.json"), settings.to_string()).unwrap();

    let mut server = MlServer::start(&bin, repo.path());
    server.wait_ready(Duration::from_secs(120));
    let edge = format!("127.0.0.1:{}", server.grpc);
    let mut report = vec![];
    for (name, path, shape, dir, cuts) in &plan {
        for &cut in cuts {
            let codecs: &[&str] = if name == "tiny_resnet" { &["fp32", "fp16", "int8"] } else { &["fp32", "int8"] };
            // The built-in model also runs from the export alone (no MODEL: the head file, and
            // the fp32 tail for --check).
            let sources: &[bool] = if name == "tiny_resnet" { &[true, false] } else { &[true] };
            for (&codec, &with_model) in codecs.iter().flat_map(|c| sources.iter().map(move |m| (c, m))) {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_cleave"));
                cmd.arg("run");
                if with_model {
                    cmd.arg(path);
                    if let Some(s) = shape {
                        cmd.args(["--shape", s]);
                    }
                }
                let o = cmd
                    .args(["--edge", &edge, "--edge-kind", "oip", "--export"])
                    .arg(dir)
                    .args(["--cut", &cut.to_string(), "--codec", codec, "--frames", "2", "--timeout", "60s"])
                    .args(["--check", "--json"])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&o.stdout);
                assert!(
                    o.status.success(),
                    "cleave run {name} cut {cut} {codec}: {}\n{stdout}\nmlserver log:\n{}",
                    String::from_utf8_lossy(&o.stderr),
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
                let v: Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(v["summary"]["remote"], 2, "every frame answered by MLServer: {stdout}");
                let c = &v["check"];
                let (whole, tail, bound) = (
                    c["max_vs_whole"].as_f64().unwrap(),
                    c["max_vs_local_tail"].as_f64().unwrap(),
                    c["max_boundary_error_vs_bound"].as_f64().unwrap(),
                );
                let times = v["frames"][0]["server_times"].as_str().unwrap_or("-").to_owned();
                let from = if with_model { "" } else { " (export only)" };
                let line = format!(
                    "{name:<15} cut {cut:>3} {codec:<4}{from}: vs whole {whole:.2e}, vs local tail {tail:.2e}, boundary {bound:.3}× bound, server times {times}"
                );
                eprintln!("{line}");
                report.push(line.clone());
                assert_eq!(times, "reported", "the runtime reports compute_ms: {stdout}");
                if codec == "fp32" {
                    assert!(whole <= 1e-5, "{line}");
                } else {
                    // fp16 and int8: the boundary within the codec's bound, the server's tail
                    // equal to the local one on the decoded boundary.
                    assert!(bound <= 1.0, "{line}");
                    assert!(tail <= 1e-5, "{line}");
                }
            }
        }
    }

    // No --export: the device derives the tail's inputs itself; the quiet runtime reports no
    // times, so they are inferred.
    let o = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .arg("run")
        .arg(root.join("models/tiny_resnet.onnx"))
        .args(["--edge", &edge, "--edge-kind", "oip", "--model-name", "tiny_quiet"])
        .args(["--cut", &tiny_cut.to_string(), "--frames", "3", "--timeout", "60s", "--check", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["summary"]["remote"], 3, "{stdout}");
    assert!(v["check"]["max_vs_whole"].as_f64().unwrap() <= 1e-5, "{stdout}");
    for f in v["frames"].as_array().unwrap() {
        assert_eq!(f["server_times"], "inferred", "{f}");
        assert!(f["record"]["compute_ms"].as_f64().unwrap() >= 0.0, "{f}");
        assert!(f["record"]["queue_ms"].as_f64().unwrap() >= 0.0, "{f}");
    }
    report.push(format!(
        "tiny_quiet (no reported times) cut {tiny_cut}: vs whole {:.2e}, server times inferred",
        v["check"]["max_vs_whole"].as_f64().unwrap()
    ));

    // A cleave-to-cleave codec is refused before anything is sent.
    let o = Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(["run", "--edge", &edge, "--edge-kind", "oip", "--cut", "5", "--codec", "int4"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cleave-to-cleave"), "{}", String::from_utf8_lossy(&o.stderr));
    println!("{}", report.join("\n"));
}

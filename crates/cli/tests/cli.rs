//! The `cleave` binary, driven as a user drives it.

use std::path::Path;
use std::process::{Command, Output};

use cleave_graph::DType;
use cleave_graph::build::{GraphBuilder, zoo};
use npyz::WriterBuilder;
use prost::Message;
use serde_json::Value;

fn cleave(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cleave")).args(args).output().expect("cleave runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The contract for bad input: exit code 1, one `error:` line naming the problem, no panic.
fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit code 1, got {:?}; stderr: {err}", o.status);
    assert!(!err.contains("panicked"), "cleave panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line of error, got: {err}");
    assert!(lines[0].starts_with("error: "), "not an error line: {err}");
    assert!(err.contains(needle), "error does not mention `{needle}`: {err}");
}

fn write_npy_f32(path: &Path, shape: &[u64], data: &[f32]) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut f).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn write_npy_f64(path: &Path, shape: &[u64], data: &[f64]) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut f).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn shipped_default_model_is_what_the_builder_makes() {
    let shipped = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx")).unwrap();
    assert_eq!(
        shipped,
        zoo::tiny_resnet(zoo::TINY_RESNET_SEED).encode_to_vec(),
        "models/tiny_resnet.onnx is stale: cargo run -p cleave-graph --example gen_models"
    );
}

#[test]
fn inspect_without_arguments_runs_on_the_built_in_model() {
    let o = cleave(&["inspect"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("tiny_resnet"), "{out}");
    assert!(out.contains("crossing"), "{out}");
}

#[test]
fn inspect_json_lists_cuts_in_order() {
    let o = cleave(&["inspect", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let cuts = v["cuts"].as_array().unwrap();
    assert_eq!(v["model"]["num_cuts"].as_u64().unwrap() as usize, cuts.len());
    for (i, c) in cuts.iter().enumerate() {
        assert_eq!(c["index"].as_u64().unwrap() as usize, i);
    }
    let positions: Vec<u64> = cuts.iter().map(|c| c["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*positions.last().unwrap(), v["model"]["compute_nodes"].as_u64().unwrap());
    // Cut 0 is the input; the last cut has nothing crossing.
    assert_eq!(cuts[0]["tensors"][0]["name"], "image");
    assert!(cuts.last().unwrap()["tensors"].as_array().unwrap().is_empty());
    // The residual block makes two-tensor frontiers; the chain parts are bottlenecks.
    assert!(cuts.iter().any(|c| c["tensors"].as_array().unwrap().len() == 2));
    assert!(cuts.iter().filter(|c| c["bottleneck"].as_bool().unwrap()).count() > 5);
    // Head FLOPs grow monotonically to the total.
    let flops: Vec<u64> = cuts.iter().map(|c| c["head_flops"].as_u64().unwrap()).collect();
    assert!(flops.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*flops.last().unwrap(), v["model"]["flops"].as_u64().unwrap());
}

#[test]
fn split_writes_standalone_parts_and_a_manifest() {
    let dir = tmp();
    let out = dir.path().join("parts");
    let o = cleave(&["split", "--cut", "4", "--cut", "10", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["parts"].as_array().unwrap().len(), 3);
    assert_eq!(m["boundaries"][0]["cut"], 4);
    assert_eq!(m["parts"][2]["model_outputs"][0], "logits");
    // Every part is a standalone model cleave can load on its own.
    for i in 0..3 {
        let p = out.join(format!("part{i}.onnx"));
        let o = cleave(&["inspect", p.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "part{i}: {}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["model"]["inputs"], m["parts"][i]["inputs"], "part{i} inputs differ from the manifest");
        assert_eq!(v["model"]["outputs"], m["parts"][i]["outputs"], "part{i} outputs differ from the manifest");
    }
}

#[test]
fn infer_head_then_tail_matches_the_whole_model() {
    let o = cleave(&["infer", "--cut", "3", "--cut", "11", "--check", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let err = v["max_relative_error"].as_f64().unwrap();
    assert!(err <= 1e-5, "head→tail differs from whole by {err}");
    assert_eq!(v["part_ms"].as_array().unwrap().len(), 3);
}

#[test]
fn infer_reads_and_writes_npy() {
    let dir = tmp();
    let x = dir.path().join("x.npy");
    let data: Vec<f32> = (0..3 * 32 * 32).map(|i| ((i % 17) as f32) / 17.0).collect();
    write_npy_f32(&x, &[1, 3, 32, 32], &data);
    let out = dir.path().join("y.npy");
    let o = cleave(&["infer", "--input", x.to_str().unwrap(), "--cut", "5", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let y = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(y.shape(), &[1, 10]);
}

#[test]
fn regression_truncated_model_file_is_a_clean_error() {
    let dir = tmp();
    let bytes = zoo::tiny_resnet(1).encode_to_vec();
    let p = dir.path().join("truncated.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&cleave(&["inspect", p.to_str().unwrap()]), "not a valid ONNX model");
}

#[test]
fn regression_random_bytes_are_a_clean_error() {
    let dir = tmp();
    let mut rng = cleave_graph::build::SeededNormal::new(3);
    let bytes: Vec<u8> = (0..4096).map(|_| (rng.uniform() * 256.0) as u8).collect();
    let p = dir.path().join("random.onnx");
    std::fs::write(&p, bytes).unwrap();
    assert_clean_error(&cleave(&["inspect", p.to_str().unwrap()]), "not a valid ONNX model");
}

#[test]
fn regression_unsupported_operator_is_named() {
    let mut b = GraphBuilder::new("exotic", 1);
    let x = b.input("x", DType::F32, &[1, 4]);
    let y = b.node("FrobnicateTensor", &[&x], &[]);
    b.output(&y);
    let dir = tmp();
    let p = dir.path().join("exotic.onnx");
    std::fs::write(&p, b.build().encode_to_vec()).unwrap();
    assert_clean_error(&cleave(&["inspect", p.to_str().unwrap()]), "operator `FrobnicateTensor`");
}

#[test]
fn regression_cut_index_out_of_range() {
    let dir = tmp();
    let o = cleave(&["split", "--cut", "999", "-o", dir.path().join("x").to_str().unwrap()]);
    assert_clean_error(&o, "cut 999 is out of range");
    assert_clean_error(&cleave(&["infer", "--cut", "999"]), "cut 999 is out of range");
}

#[test]
fn regression_input_of_the_wrong_shape() {
    let dir = tmp();
    let x = dir.path().join("x.npy");
    write_npy_f32(&x, &[1, 3, 31, 32], &vec![0.0; 3 * 31 * 32]);
    let o = cleave(&["infer", "--input", x.to_str().unwrap()]);
    assert_clean_error(&o, "input `image` is f32 [1, 3, 31, 32], but the model expects f32 [1, 3, 32, 32]");
}

#[test]
fn regression_input_of_the_wrong_dtype() {
    let dir = tmp();
    let x = dir.path().join("x.npy");
    write_npy_f64(&x, &[1, 3, 32, 32], &vec![0.0; 3 * 32 * 32]);
    let o = cleave(&["infer", "--input", x.to_str().unwrap()]);
    assert_clean_error(&o, "input `image` is f64");
}

#[test]
fn regression_unresolved_symbolic_dim_names_the_shape_flag() {
    let mut b = GraphBuilder::new("dynamic", 1);
    let x = b.input("x", DType::F32, &[0, 3, 0, 0]);
    let y = b.relu(&x);
    b.output(&y);
    let dir = tmp();
    let p = dir.path().join("dynamic.onnx");
    std::fs::write(&p, b.build().encode_to_vec()).unwrap();
    let o = cleave(&["inspect", p.to_str().unwrap()]);
    assert_clean_error(&o, "input `x` has an unresolved dimension 2");
    assert!(stderr(&o).contains("--shape x=1,3,<dim2>,<dim3>"), "{}", stderr(&o));
    // Pinning it works, and the batch dim defaulted to 1.
    let o = cleave(&["inspect", p.to_str().unwrap(), "--shape", "x=1,3,8,8", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["model"]["inputs"][0]["shape"], serde_json::json!([1, 3, 8, 8]));
}

#[test]
fn regression_missing_model_file() {
    assert_clean_error(&cleave(&["inspect", "/nonexistent/model.onnx"]), "cannot read model /nonexistent/model.onnx");
}

#[test]
fn parts_agree_with_onnxruntime() {
    // Runs tests/onnxruntime/check_parts.py; CI sets CLEAVE_REQUIRE_ORT=1 so a missing
    // onnxruntime fails instead of skipping.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/onnxruntime/check_parts.py");
    let require = std::env::var("CLEAVE_REQUIRE_ORT").is_ok_and(|v| v == "1");
    let probe = Command::new("python3").args(["-c", "import onnxruntime, numpy"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(!require, "CLEAVE_REQUIRE_ORT=1 but python3 cannot import onnxruntime and numpy");
        eprintln!("SKIP: python3 with onnxruntime and numpy is not available (pip install onnxruntime numpy)");
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args(["--cleave", env!("CARGO_BIN_EXE_cleave")]);
    if let Ok(shared) = cleave_testkit::shared_dir() {
        cmd.args(["--shared", shared.to_str().unwrap()]);
    }
    let o = cmd.output().unwrap();
    let out = stdout(&o);
    eprintln!("{out}{}", stderr(&o));
    assert!(o.status.success(), "onnxruntime cross-check failed:\n{out}");
    if require && cleave_testkit::shared_dir().is_ok() {
        assert!(out.contains("all parts agree"), "the cross-check did not run:\n{out}");
    }
}

#[test]
fn bench_rpc_writes_its_report() {
    // A smoke run: the command works end to end and its JSON has the documented fields (the
    // numbers themselves are for `cleave bench rpc` in release, not for a test).
    let dir = tmp();
    let json = dir.path().join("rpc.json");
    let o = cleave(&[
        "bench",
        "rpc",
        "--frames",
        "5",
        "--clients",
        "2",
        "--seconds",
        "0.2",
        "--codecs",
        "fp32,int8",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["overhead"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["frames"], 5);
        assert!(r["overhead_p50_us"].as_f64().unwrap() > 0.0);
        assert!(r["bytes_on_wire"].as_u64().unwrap() > 0);
    }
    assert_eq!(rows[0]["bytes_on_wire"], 204800, "fp32 sends the 200 KiB boundary as is");
    assert!(rows[1]["bytes_on_wire"].as_u64().unwrap() < 60000, "int8 sends a quarter");
    assert!(v["throughput"]["frames"].as_u64().unwrap() > 0);
    assert_eq!(v["throughput"]["failed"], 0);
}

fn digits_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/digits")
}

#[test]
fn calibrate_reports_exits_thresholds_and_cut_codec_accuracy() {
    let d = digits_dir();
    let dir = tmp();
    let json = dir.path().join("c.json");
    let md = dir.path().join("c.md");
    let o = cleave(&[
        "calibrate",
        d.join("digits_exits.onnx").to_str().unwrap(),
        "--data",
        d.join("test.npz").to_str().unwrap(),
        "--limit",
        "60",
        "--cuts",
        "7,15",
        "--codecs",
        "int8,int2",
        "--quiet",
        "-o",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["format"], "cleave-calibration/1");
    assert_eq!(v["samples"], 60);
    let base = v["baseline_accuracy"].as_f64().unwrap();
    assert!(base > 0.9, "the trained model classifies digits: {base}");
    for e in v["exits"].as_array().unwrap() {
        let a = e["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a) && a > 0.8, "{e}");
        let points = e["thresholds"].as_array().unwrap();
        // A higher threshold never exits more often.
        let rates: Vec<f64> = points.iter().map(|p| p["exit_rate"].as_f64().unwrap()).collect();
        assert!(rates.windows(2).all(|w| w[0] >= w[1]), "{rates:?}");
    }
    let cuts = v["cuts"].as_array().unwrap();
    assert_eq!(cuts.len(), 4);
    let bytes = |cut: u64, codec: &str| {
        cuts.iter().find(|e| e["cut"] == cut && e["codec"] == codec).unwrap()["bytes"].as_u64().unwrap()
    };
    assert_eq!(bytes(7, "int8"), 4 * bytes(7, "int2"));
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("`exit_1` (exit)") && table.contains("| threshold | exit rate |"), "{table}");
    assert!(stdout(&o).contains("final output with the features at each cut"));
}

#[test]
fn regression_calibration_data_without_labels_is_a_clean_error() {
    let dir = tmp();
    let npz = dir.path().join("x.npz");
    let x = cleave_data::Tensor::from_shape(&[2, 1, 28, 28], &[0f32; 2 * 784]).unwrap();
    cleave_data::npz::write(std::fs::File::create(&npz).unwrap(), &[("x", &x)], false).unwrap();
    let model = digits_dir().join("digits_exits.onnx");
    let o = cleave(&["calibrate", model.to_str().unwrap(), "--data", npz.to_str().unwrap()]);
    assert_clean_error(&o, "no `y` array");
    // Samples of the wrong size name both shapes.
    let y = cleave_data::Tensor::from_shape(&[2], &[1i64, 2]).unwrap();
    let x = cleave_data::Tensor::from_shape(&[2, 3, 3], &[0f32; 18]).unwrap();
    cleave_data::npz::write(std::fs::File::create(&npz).unwrap(), &[("x", &x), ("y", &y)], false).unwrap();
    let o = cleave(&["calibrate", model.to_str().unwrap(), "--data", npz.to_str().unwrap()]);
    assert_clean_error(&o, "[3, 3]");
    // Not an archive at all.
    std::fs::write(&npz, b"hello").unwrap();
    let o = cleave(&["calibrate", model.to_str().unwrap(), "--data", npz.to_str().unwrap()]);
    assert_clean_error(&o, "not a usable .npz");
}

#[test]
fn regression_unknown_exit_name_is_a_clean_error() {
    let model = digits_dir().join("digits_exits.onnx");
    let o = cleave(&["inspect", model.to_str().unwrap(), "--exits", "exit_9"]);
    assert_clean_error(&o, "`exit_9` is not an output");
}

//! `cleave export`: every Triton `config.pbtxt` agrees with the ONNX file beside it (names,
//! datatypes, dims), and every exported tail, run by tract on what a device sends, computes
//! what the model's own tail computes. Triton itself cannot run here; its config is checked
//! against the ONNX file it describes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cleave_engine::{Engine, EngineConfig, TensorMap};
use cleave_graph::export::{ExportManifest, InputRole, WireDType};
use cleave_graph::{DType, InputShapes, ModelGraph, pb};
use prost::Message;

fn cleave() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cleave"))
}

/// One `input [...]`/`output [...]` entry of a config.pbtxt.
#[derive(Debug, PartialEq)]
struct Entry {
    name: String,
    data_type: String,
    dims: Vec<i64>,
}

/// A small reader for the subset of protobuf text format that Triton configs use.
fn parse_config(text: &str) -> (BTreeMap<String, String>, Vec<Entry>, Vec<Entry>) {
    let mut scalars = BTreeMap::new();
    let (mut inputs, mut outputs) = (vec![], vec![]);
    let mut section: Option<&str> = None;
    let mut cur: Option<Entry> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line {
            "input [" => section = Some("input"),
            "output [" => section = Some("output"),
            "]" => section = None,
            "{" => cur = Some(Entry { name: String::new(), data_type: String::new(), dims: vec![] }),
            "}" | "}," => {
                let e = cur.take().expect("an entry is open");
                match section {
                    Some("input") => inputs.push(e),
                    Some("output") => outputs.push(e),
                    _ => panic!("entry outside a section"),
                }
            }
            _ => {
                let (k, v) = line.split_once(':').unwrap_or_else(|| panic!("unparsed line `{line}`"));
                let v = v.trim();
                match cur.as_mut() {
                    Some(e) => match k.trim() {
                        "name" => e.name = v.trim_matches('"').to_owned(),
                        "data_type" => e.data_type = v.to_owned(),
                        "dims" => {
                            e.dims = v
                                .trim_matches(|c| c == '[' || c == ']')
                                .split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(|d| d.parse().unwrap())
                                .collect()
                        }
                        other => panic!("unknown entry field {other}"),
                    },
                    None => {
                        scalars.insert(k.trim().to_owned(), v.trim_matches('"').to_owned());
                    }
                }
            }
        }
    }
    (scalars, inputs, outputs)
}

fn onnx_entries(values: &[pb::ValueInfoProto]) -> Vec<Entry> {
    values
        .iter()
        .map(|v| {
            let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
                panic!("{} is not a tensor", v.name)
            };
            let dtype = DType::from_onnx_code(t.elem_type).expect("a known type");
            let dims = t
                .shape
                .as_ref()
                .expect("a shape")
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                    ref other => panic!("{}: symbolic dim {other:?}", v.name),
                })
                .collect();
            Entry { name: v.name.clone(), data_type: cleave_graph::export::triton_type(dtype).to_owned(), dims }
        })
        .collect()
}

/// Runs `cleave export ARGS -o DIR`, which must succeed, and reads the manifest it wrote.
fn export_into(dir: &Path, args: &[&str]) -> ExportManifest {
    let o = cleave().arg("export").args(args).arg("-o").arg(dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ExportManifest::from_json(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Exports `model` (None: the built-in one) for Triton at `cuts` in every wire datatype, and
/// checks each config.pbtxt against its model.onnx, and each tail against the model's own.
fn check_export(model: Option<&Path>, shape: Option<&str>, cuts: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let model_arg = model.map(|m| m.to_str().expect("UTF-8 test path").to_owned());
    let mut args: Vec<&str> = model_arg.as_deref().into_iter().collect();
    let mut shapes = InputShapes::none();
    if let Some(s) = shape {
        args.extend(["--shape", s]);
        let (n, d) = InputShapes::parse_one(s).unwrap();
        shapes = shapes.with(n, d);
    }
    let cut_list = cuts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    args.extend(["--cuts", &cut_list, "--format", "triton", "--dtypes", "fp32,fp16,uint8"]);
    let manifest = export_into(dir.path(), &args);
    assert_eq!(manifest.tails.len(), cuts.len() * 3);

    let bytes = match model {
        Some(m) => std::fs::read(m).unwrap(),
        None => std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx")).unwrap(),
    };
    let graph = ModelGraph::from_bytes(&bytes, &shapes).unwrap();
    let engine = Engine::new(EngineConfig { threads: 1, cache_capacity: 8 });
    let inputs = cleave_testkit::inputs_for(&graph, 7);

    for tail in &manifest.tails {
        let tdir = dir.path().join(&tail.name);
        let config = std::fs::read_to_string(tdir.join("config.pbtxt")).unwrap();
        let onnx = std::fs::read(tdir.join("1/model.onnx")).unwrap();
        let proto = pb::ModelProto::decode(&onnx[..]).unwrap();
        let g = proto.graph.as_ref().unwrap();
        let (scalars, inputs_cfg, outputs_cfg) = parse_config(&config);
        assert_eq!(scalars["name"], tail.name, "{config}");
        assert_eq!(scalars["backend"], "onnxruntime");
        assert_eq!(scalars["max_batch_size"], "0");
        assert_eq!(inputs_cfg, onnx_entries(&g.input), "inputs of {}:\n{config}", tail.name);
        assert_eq!(outputs_cfg, onnx_entries(&g.output), "outputs of {}:\n{config}", tail.name);
        // The datatype on the wire is the one asked for.
        for i in tail.inputs.iter().filter(|i| i.role == InputRole::Tensor && i.source_dtype == DType::F32) {
            assert_eq!(i.spec.dtype, tail.dtype.dtype(), "{}", tail.name);
        }
        if let Some(head) = &tail.head {
            assert!(dir.path().join(head).is_file(), "{head} is written");
        }

        // The exported tail, run by tract on what a device sends, equals the model's tail on
        // the decoded boundary. tract compiles DequantizeLinear only with a constant scale, so
        // a uint8 tail with per-request scale inputs runs in onnxruntime instead, in
        // oip_mlserver.rs (the Cast-Sub-Mul prologue of opsets below 10 runs here).
        if tail.prologue.as_deref() == Some("DequantizeLinear") {
            eprintln!("{}: DequantizeLinear with scale inputs: checked by onnxruntime in oip_mlserver.rs", tail.name);
            continue;
        }
        let mut env = inputs.clone();
        if tail.cut > 0 {
            env.extend(engine.run(&engine.part(&graph, 0, tail.cut).unwrap(), &inputs).unwrap());
        }
        let exported = ModelGraph::from_bytes(&onnx, &InputShapes::none()).unwrap();
        let mut feed = TensorMap::new();
        let mut decoded = env.clone();
        for i in &tail.inputs {
            let t = &env[&i.of];
            match (i.role, tail.dtype) {
                (InputRole::Tensor, WireDType::Fp32) => {
                    feed.insert(i.spec.name.clone(), t.clone());
                }
                (InputRole::Tensor, _) if i.source_dtype != DType::F32 => {
                    feed.insert(i.spec.name.clone(), t.clone());
                }
                (InputRole::Tensor, WireDType::Fp16) => {
                    let x: Vec<f32> = t.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
                    let enc = cleave_codec::encode(
                        &x,
                        t.shape(),
                        cleave_codec::EncodeOptions {
                            codec: cleave_codec::Codec::Fp16,
                            per_channel: false,
                            lz4: false,
                        },
                    )
                    .unwrap();
                    let dec = cleave_codec::decode(&enc).unwrap();
                    decoded.insert(i.of.clone(), Arc::new(cleave_engine::Tensor::from_shape(t.shape(), &dec).unwrap()));
                    // SAFETY: the payload is exactly shape-many little-endian f16 (checked by
                    // from_raw_dt), any bit pattern is a valid f16.
                    let h = unsafe {
                        cleave_engine::Tensor::from_raw_dt(cleave_engine::DatumType::F16, t.shape(), &enc.payload)
                    }
                    .unwrap();
                    feed.insert(i.spec.name.clone(), Arc::new(h));
                }
                (InputRole::Tensor, WireDType::Uint8) => {
                    let x: Vec<f32> = t.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
                    let enc = cleave_codec::encode(
                        &x,
                        t.shape(),
                        cleave_codec::EncodeOptions {
                            codec: cleave_codec::Codec::Int8,
                            per_channel: false,
                            lz4: false,
                        },
                    )
                    .unwrap();
                    let Some(cleave_codec::Quant::PerTensor { scale, zero_point }) = enc.quant else { panic!() };
                    let dec = cleave_codec::decode(&enc).unwrap();
                    decoded.insert(i.of.clone(), Arc::new(cleave_engine::Tensor::from_shape(t.shape(), &dec).unwrap()));
                    feed.insert(
                        i.spec.name.clone(),
                        Arc::new(cleave_engine::Tensor::from_shape(t.shape(), &enc.payload).unwrap()),
                    );
                    let s = tail.inputs.iter().find(|j| j.of == i.of && j.role == InputRole::Scale).unwrap();
                    let z = tail.inputs.iter().find(|j| j.of == i.of && j.role == InputRole::ZeroPoint).unwrap();
                    feed.insert(
                        s.spec.name.clone(),
                        Arc::new(cleave_engine::Tensor::from_shape(&[1], &[scale]).unwrap()),
                    );
                    feed.insert(
                        z.spec.name.clone(),
                        Arc::new(cleave_engine::Tensor::from_shape(&[1], &[zero_point]).unwrap()),
                    );
                }
                _ => {}
            }
        }
        let got = engine.run(&engine.whole(&exported).unwrap(), &feed).unwrap();
        let reference = engine.run(&engine.part(&graph, tail.cut, graph.last_cut()).unwrap(), &decoded).unwrap();
        for o in &tail.outputs {
            let e = cleave_engine::relative_error(&got[&o.name], &reference[&o.name]).unwrap();
            eprintln!("{} ({}): {} relative error {e:.2e}", tail.name, tail.prologue.as_deref().unwrap_or("-"), o.name);
            assert!(e <= 1e-5, "{}: output {} differs by {e}", tail.name, o.name);
        }
    }
}

#[test]
fn triton_configs_match_their_onnx_files_for_the_built_in_model() {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx")).unwrap();
    let g = ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap();
    let last = g.last_cut();
    check_export(None, None, &[0, last / 3, 2 * last / 3]);
}

#[test]
fn triton_configs_match_their_onnx_files_for_shared_models() {
    // The light models' synthetic weights give a constant softmax, on which any error would
    // vanish: export the architecture with seeded random weights (as e2e.rs does).
    let dir = tempfile::tempdir().unwrap();
    for (rel, shape, randomize) in [
        ("models/light/light_resnet50.onnx", None, true),
        ("models/ch_ppocr_mobile_v2.0_cls_infer.onnx", Some("x=1,3,48,192"), false),
    ] {
        let Some(path) = cleave_testkit::shared_file(rel) else { return };
        let mut shapes = InputShapes::none();
        if let Some(s) = shape {
            let (n, d) = InputShapes::parse_one(s).unwrap();
            shapes = shapes.with(n, d);
        }
        let g = cleave_testkit::load(&path, &shapes, randomize);
        let path = if randomize {
            let p = dir.path().join(path.file_name().unwrap());
            std::fs::write(&p, g.proto().encode_to_vec()).unwrap();
            p
        } else {
            path
        };
        let last = g.last_cut();
        check_export(Some(&path), shape, &[last / 3, 2 * last / 3]);
    }
}

#[test]
fn int4_and_unknown_datatypes_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let o = cleave()
        .args(["export", "--cuts", "3", "--format", "triton", "--dtypes", "int4", "-o"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cleave-to-cleave"), "{err}");
    let o = cleave().args(["export", "--cuts", "999", "--format", "mlserver", "-o"]).arg(dir.path()).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("out of range"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `--scale S --zero-point Z` bakes the quantization into the tail: a DequantizeLinear with
/// constant parameters (which tract runs), and no scale or zero-point inputs.
#[test]
fn fixed_scale_and_zero_point_are_baked_into_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (scale, zp) = (0.05f32, 100u8);
    let manifest = export_into(
        dir.path(),
        &["--cuts", "5", "--format", "triton", "--dtypes", "uint8", "--scale", "0.05", "--zero-point", "100"],
    );
    let tail = &manifest.tails[0];
    assert!(tail.inputs.iter().all(|i| i.role == InputRole::Tensor), "{:?}", tail.inputs);
    let onnx = std::fs::read(dir.path().join(&tail.file)).unwrap();
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx")).unwrap();
    let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap();
    let engine = Engine::new(EngineConfig { threads: 1, cache_capacity: 8 });
    let inputs = cleave_testkit::inputs_for(&graph, 3);
    let mut env = inputs.clone();
    env.extend(engine.run(&engine.part(&graph, 0, 5).unwrap(), &inputs).unwrap());
    let (mut feed, mut decoded) = (TensorMap::new(), env.clone());
    for i in &tail.inputs {
        let t = &env[&i.of];
        let x: Vec<f32> = t.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
        let q: Vec<u8> = x.iter().map(|v| ((v / scale).round() + zp as f32).clamp(0.0, 255.0) as u8).collect();
        let d: Vec<f32> = q.iter().map(|&q| (q as f32 - zp as f32) * scale).collect();
        feed.insert(i.spec.name.clone(), Arc::new(cleave_engine::Tensor::from_shape(t.shape(), &q).unwrap()));
        decoded.insert(i.of.clone(), Arc::new(cleave_engine::Tensor::from_shape(t.shape(), &d).unwrap()));
    }
    let exported = ModelGraph::from_bytes(&onnx, &InputShapes::none()).unwrap();
    let got = engine.run(&engine.whole(&exported).unwrap(), &feed).unwrap();
    let reference = engine.run(&engine.part(&graph, 5, graph.last_cut()).unwrap(), &decoded).unwrap();
    for o in &tail.outputs {
        let e = cleave_engine::relative_error(&got[&o.name], &reference[&o.name]).unwrap();
        assert!(e <= 1e-5, "{}: {e}", o.name);
    }
}

/// A `cleave serve` process on free ports (it speaks the Open Inference Protocol too), killed
/// when dropped.
struct Serve(std::process::Child, String);

impl Serve {
    fn start(models: &[(String, std::path::PathBuf)]) -> Serve {
        use std::io::BufRead;
        let mut cmd = cleave();
        cmd.args(["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"]);
        for (name, path) in models {
            cmd.arg("--model").arg(format!("{name}={}", path.display()));
        }
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("cleave serve starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("listening ") => break l,
                Some(Ok(_)) => continue,
                _ => panic!("cleave serve exited ({:?}) before listening", child.wait()),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let grpc = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect("grpc=").to_owned();
        Serve(child, grpc)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec::<f32>().unwrap()
}

fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE) as f64;
    got.iter().zip(want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max) / scale
}

/// `cleave run --edge-kind oip --export DIR` with no MODEL: the device runs the export's
/// head_c<N>.onnx and offloads to `cleave serve` serving the exported tails as whole models;
/// its answers equal the whole model run locally (1e-5 at fp32; at uint8 the boundary within
/// the codec's bound and the answer equal to the tail on the dequantized boundary). With no
/// server reachable, the export's fp32 tail answers every frame. A file changed after the
/// export is refused by its sha256.
#[test]
fn the_export_alone_configures_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let cut = 5;
    // uint8 with a fixed scale and zero point: tract (in `cleave serve`) compiles
    // DequantizeLinear only with constant ones. Per-request ones run in oip_mlserver.rs.
    let manifest = export_into(
        dir.path(),
        &["--cuts", "5", "--format", "triton", "--dtypes", "fp32,uint8", "--scale", "0.1", "--zero-point", "128"],
    );
    for t in &manifest.tails {
        assert!(t.sha256.as_ref().is_some_and(|h| h.len() == 64), "{t:?}");
        assert!(t.head_sha256.as_ref().is_some_and(|h| h.len() == 64), "{t:?}");
    }
    let served: Vec<(String, std::path::PathBuf)> =
        manifest.tails.iter().map(|t| (t.name.clone(), dir.path().join(&t.file))).collect();

    // The reference: the whole model, locally, on the frames `cleave run` makes (frame k's
    // input is random_input(spec, k)).
    let frames = 3;
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny_resnet.onnx")).unwrap();
    let graph = ModelGraph::from_bytes(&bytes, &InputShapes::none()).unwrap();
    let engine = Engine::new(EngineConfig { threads: 1, cache_capacity: 8 });
    let last: TensorMap =
        graph.inputs().iter().map(|s| (s.name.clone(), cleave_engine::random_input(s, frames - 1))).collect();
    let whole = engine.run(&engine.whole(&graph).unwrap(), &last).unwrap();
    assert_eq!(whole.len(), 1);
    let want: Vec<f32> = whole.values().next().unwrap().to_plain_array_view::<f32>().unwrap().iter().copied().collect();

    let run = |edge: &str, codec: &str, out: &Path| {
        let o = cleave()
            .args(["run", "--edge", edge, "--edge-kind", "oip", "--export"])
            .arg(dir.path())
            .args(["--cut", &cut.to_string(), "--codec", codec, "--frames", &frames.to_string()])
            .args(["--timeout", "30s", "--check", "--json", "--output"])
            .arg(out)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "cleave run {codec}: {}\n{stdout}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };

    let server = Serve::start(&served);
    for codec in ["fp32", "int8"] {
        let out = dir.path().join(format!("out_{codec}.npy"));
        let v = run(&server.1, codec, &out);
        assert_eq!(v["summary"]["remote"], frames, "every frame answered by the server: {v}");
        let c = &v["check"];
        let (vs_whole, vs_tail, bound) = (
            c["max_vs_whole"].as_f64().unwrap(),
            c["max_vs_local_tail"].as_f64().unwrap(),
            c["max_boundary_error_vs_bound"].as_f64().unwrap(),
        );
        let e = max_rel(&read_npy(&out), &want);
        eprintln!(
            "{codec}: vs the whole model {e:.2e}; --check: vs head + fp32 tail {vs_whole:.2e}, vs local tail {vs_tail:.2e}, boundary {bound:.3}× bound"
        );
        if codec == "fp32" {
            assert!(e <= 1e-5, "{codec}: {e}");
        } else {
            assert!(bound <= 1.0, "{codec}: boundary {bound}× the codec's bound");
            assert!(vs_tail <= 1e-5, "{codec}: {vs_tail}");
        }
    }
    drop(server);

    // No server: the export's fp32 tail answers every frame, with the whole model's answer.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    for codec in ["fp32", "int8"] {
        let out = dir.path().join(format!("local_{codec}.npy"));
        let v = run(&nobody, codec, &out);
        assert_eq!(v["summary"]["local_fallback"], frames, "{v}");
        for f in v["frames"].as_array().unwrap() {
            assert_eq!(f["record"]["status"], "local-fallback", "{f}");
        }
        let e = max_rel(&read_npy(&out), &want);
        eprintln!("no server, {codec}: the fp32 tail locally vs the whole model {e:.2e}");
        assert!(e <= 1e-5, "{e}");
    }

    // Without an fp32 tail the device still starts (a server could answer), but a frame that
    // needs the fallback fails, saying why.
    let uint8_only = tempfile::tempdir().unwrap();
    export_into(uint8_only.path(), &["--cuts", "5", "--format", "triton", "--dtypes", "uint8"]);
    let o = cleave()
        .args(["run", "--edge", &nobody, "--edge-kind", "oip", "--export"])
        .arg(uint8_only.path())
        .args(["--cut", "5", "--codec", "int8", "--frames", "1", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let error = v["frames"][0]["record"]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("no fp32 tail at cut 5"), "{stdout}");

    // A file changed after the export is refused.
    let head = dir.path().join(manifest.tails[0].head.as_ref().unwrap());
    let mut b = std::fs::read(&head).unwrap();
    b.push(0);
    std::fs::write(&head, b).unwrap();
    let o = cleave()
        .args(["run", "--edge", &nobody, "--edge-kind", "oip", "--export"])
        .arg(dir.path())
        .args(["--cut", "5", "--frames", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("sha256"), "{err}");
}

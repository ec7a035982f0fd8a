//! Writes the starting corpora of the `request_decode` and `codec_decode` fuzz targets: real
//! encodings of small tensors with every codec (fp32, fp16, bf16, int8, int4, int2, per-tensor
//! and per-channel, with and without LZ4; JPEG grayscale, RGB and batched), as requests the way a
//! cleave device sends them and in `codec_case.rs`'s format. Each is checked to decode before it
//! is written, so the fuzzer starts past the framing.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml -p cleave-fuzz-seeds` (from the repository root;
//! an optional argument names the corpus root, `fuzz/corpus` by default).

#[path = "../../fuzz_targets/codec_case.rs"]
mod codec_case;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cleave_codec::{Codec, EncodeOptions, Encoded};
use cleave_graph::DType;
use cleave_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use cleave_proto::inference::{InferTensorContents, ModelInferRequest};
use cleave_proto::wire::{self, Limits};
use prost::Message;

/// A smooth, signed tensor (a feature map).
fn features(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173 + (i % 5) as f32 * 0.01).collect()
}

/// An image-like tensor, `p / 255` per channel with a gradient.
fn image(shape: &[usize]) -> Vec<f32> {
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    (0..shape.iter().product::<usize>())
        .map(|i| {
            let (ch, y, x) = ((i / (h * w)) % c, (i / w) % h, i % w);
            ((x * 13 + y * 7 + ch * 60) % 256) as f32 / 255.0
        })
        .collect()
}

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
}

fn request(inputs: Vec<(InferInputTensor, Bytes)>, params: &[(&str, &str)]) -> ModelInferRequest {
    let (inputs, raw): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
    ModelInferRequest {
        model_name: "model".into(),
        id: "1".into(),
        parameters: params.iter().map(|(k, v)| (k.to_string(), wire::str_param(*v))).collect(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let (req_dir, codec_dir) = (root.join("request_decode"), root.join("codec_decode"));
    for d in [&req_dir, &codec_dir] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    let limits = Limits::default();
    let mut cases: Vec<(String, Vec<usize>, Vec<f32>, EncodeOptions)> = vec![];
    let feature_shape = vec![1, 3, 4, 4];
    for codec in Codec::ALL {
        for (per_channel, lz4) in [(false, false), (true, false), (false, true), (true, true)] {
            if per_channel && matches!(codec, Codec::Fp32 | Codec::Fp16 | Codec::Bf16) {
                continue;
            }
            let name = format!("{codec}{}{}", if per_channel { "-pc" } else { "" }, if lz4 { "-lz4" } else { "" });
            cases.push((name, feature_shape.clone(), features(48), EncodeOptions { codec, per_channel, lz4 }));
        }
    }
    // A longer run of a repeated value, so that LZ4 emits real matches.
    cases.push((
        "int8-lz4-long".into(),
        vec![2, 64],
        vec![0.5; 128],
        EncodeOptions { codec: Codec::Int8, per_channel: false, lz4: true },
    ));
    for (q, shape) in [(90, [1, 3, 16, 16]), (50, [1, 1, 8, 8]), (75, [2, 1, 8, 8]), (10, [1, 3, 9, 17])] {
        let codec = Codec::jpeg(q).expect("a quality");
        let name = format!("{codec}-{}", shape.map(|d| d.to_string()).join("x"));
        cases.push((name, shape.to_vec(), image(&shape), EncodeOptions::new(codec)));
    }

    let mut encoded_inputs = vec![];
    for (name, shape, values, opts) in &cases {
        let enc: Encoded = cleave_codec::encode(values, shape, *opts).expect("encodes");
        cleave_codec::decode(&enc).expect("decodes");
        let bytes = codec_case::to_bytes(&enc);
        assert_eq!(codec_case::from_bytes(&bytes), enc, "{name}: the case format round-trips");
        write(&codec_dir, &format!("seed-{name}"), &bytes);

        let input = wire::encode_input("x", DType::F32, shape, &le(values), *opts).expect("encodes");
        encoded_inputs.push(input.clone());
        let req = request(vec![input], &[]);
        wire::decode_inputs(&req, &limits).expect("the request decodes");
        write(&req_dir, &format!("seed-{name}"), &req.encode_to_vec());
    }

    // Requests as a device sends them after a cut, and the other shapes a request can take.
    let cut = request(
        vec![encoded_inputs[3].clone()],
        &[
            (wire::PARAM_CUT, "7"),
            ("cleave.input_shapes", "input=1,3,4,4;mask=1,16"),
            (wire::PARAM_MODEL_SHA256, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        ],
    );
    let mut probe = request(vec![], &[]);
    probe.parameters.insert("cleave.probe".into(), wire::int_param(1));
    let mut multi = request(
        vec![
            encoded_inputs[0].clone(),
            {
                let (mut t, b) = encoded_inputs[5].clone();
                t.name = "y".into();
                (t, b)
            },
            (
                InferInputTensor {
                    name: "ids".into(),
                    datatype: "INT64".into(),
                    shape: vec![1, 3],
                    parameters: HashMap::new(),
                    contents: None,
                },
                Bytes::from([1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
            ),
        ],
        &[(wire::PARAM_CUT, "2"), ("cleave.input_shapes", "x=1,3,4,4;y=1,3,4,4;ids=1,3")],
    );
    multi.outputs.push(InferRequestedOutputTensor { name: "logits".into(), parameters: HashMap::new() });
    let typed = |datatype: &str, shape: Vec<i64>, contents: InferTensorContents| {
        let mut r = request(vec![], &[]);
        r.inputs.push(InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents: Some(contents),
        });
        r
    };
    let typed_fp32 = typed(
        "FP32",
        vec![2, 2],
        InferTensorContents { fp32_contents: vec![1.0, -2.0, 3.5, 0.0], ..Default::default() },
    );
    let typed_u8 =
        typed("UINT8", vec![3], InferTensorContents { uint_contents: vec![0, 7, 255], ..Default::default() });
    let typed_i16 =
        typed("INT16", vec![2], InferTensorContents { int_contents: vec![-300, 300], ..Default::default() });
    let typed_bool =
        typed("BOOL", vec![2], InferTensorContents { bool_contents: vec![true, false], ..Default::default() });
    for (name, req) in [
        ("cut", cut),
        ("probe", probe),
        ("multi", multi),
        ("typed-fp32", typed_fp32),
        ("typed-u8", typed_u8),
        ("typed-i16", typed_i16),
        ("typed-bool", typed_bool),
    ] {
        wire::decode_inputs(&req, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        write(&req_dir, &format!("seed-{name}"), &req.encode_to_vec());
    }
    println!("wrote {} and {}", req_dir.display(), codec_dir.display());
}

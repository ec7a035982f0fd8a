//! Feeds arbitrary bytes to what a cleave server does with a gRPC `ModelInferRequest` before it
//! computes anything (`cleave_node::server`'s `infer`): the protobuf decoding, the request
//! parameters it reads (`cleave.probe`, `cleave.model_sha256`, `cleave.cut`,
//! `cleave.input_shapes`) and `wire::decode_inputs` under the default limits, which checks every
//! tensor and decodes the codec-encoded ones (element-wise codecs, LZ4, JPEG). A panic, an
//! out-of-memory, or a decoded tensor that breaks the limits or whose bytes do not match its
//! shape is a finding (a panic inside the JPEG decoder, which the codec turns into an error, is
//! not).
//!
//! cleave-node is not linked (it pulls tokio and the engines); its `parse_shapes`, a few pure
//! lines over `InputShapes::parse_one`, is mirrored below.
#![no_main]

use cleave_graph::InputShapes;
use cleave_proto::inference::ModelInferRequest;
use cleave_proto::wire::{self, Limits, WireError};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// `cleave_node::server::PARAM_PROBE` and `PARAM_INPUT_SHAPES`.
const PARAM_PROBE: &str = "cleave.probe";
const PARAM_INPUT_SHAPES: &str = "cleave.input_shapes";

/// A copy of `cleave_node::server::parse_shapes` (keep in step).
fn parse_shapes(s: &str, limits: &Limits) -> Result<InputShapes, WireError> {
    let mut out = InputShapes::none();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (name, dims) =
            InputShapes::parse_one(part).map_err(|e| WireError::invalid(format!("{PARAM_INPUT_SHAPES}: {e}")))?;
        if dims.len() > limits.max_rank {
            return Err(WireError::invalid(format!("{PARAM_INPUT_SHAPES}: rank {} is too large", dims.len())));
        }
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.is_none_or(|n| n > limits.max_elements) {
            return Err(WireError::invalid(format!("{PARAM_INPUT_SHAPES}: input `{name}` is too large")));
        }
        out = out.with(name, dims);
    }
    Ok(out)
}

fuzz_target!(init: {
    // The JPEG decoder's own panics are caught by the codec and become errors, as they do for
    // users (see `cleave_codec::jpeg::in_decoder_call`): let them unwind to that guard. Every
    // other panic aborts, as libFuzzer's hook makes it.
    let abort_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !cleave_codec::jpeg::in_decoder_call() {
            abort_hook(info);
        }
    }));
}, |data: &[u8]| {
    let Ok(req) = ModelInferRequest::decode(data) else {
        return;
    };
    let limits = Limits::default();
    let _ = wire::get_int(&req.parameters, PARAM_PROBE);
    let _ = wire::get_str(&req.parameters, wire::PARAM_MODEL_SHA256);
    let cut = wire::get_int(&req.parameters, wire::PARAM_CUT);
    let Ok(tensors) = wire::decode_inputs(&req, &limits) else {
        return;
    };
    assert!(tensors.len() == req.inputs.len() && tensors.len() <= limits.max_inputs);
    for t in &tensors {
        assert!(t.shape.len() <= limits.max_rank, "{}: rank {}", t.name, t.shape.len());
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).expect("checked shape");
        assert!(n <= limits.max_elements, "{}: {n} elements", t.name);
        assert_eq!(t.data.len(), n * t.dtype.size(), "{}: {:?} {:?}", t.name, t.dtype, t.shape);
    }
    if let Ok(Some(_)) = cut
        && let Ok(Some(s)) = wire::get_str(&req.parameters, PARAM_INPUT_SHAPES)
    {
        let _ = parse_shapes(s, &limits);
    }
});

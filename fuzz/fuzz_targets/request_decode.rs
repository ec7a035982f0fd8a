//! Feeds arbitrary bytes to what a cleave server does with a gRPC `ModelInferRequest` before it
//! computes anything (`cleave_node::server`'s `infer`): the protobuf decoding, the request
//! parameters it reads (`cleave.probe`, `cleave.model_sha256`, `cleave.cut`,
//! `cleave.input_shapes`) and `wire::decode_inputs` under the default limits, which checks every
//! tensor and decodes the codec-encoded ones (element-wise codecs, LZ4, JPEG). A panic, an
//! out-of-memory, or a decoded tensor that breaks the limits or whose bytes do not match its
//! shape is a finding (a panic inside the JPEG decoder, which the codec turns into an error, is
//! not).
//!
//! cleave-node is not linked (it pulls tokio and the engines); the shapes parser it uses lives in
//! `cleave_proto::wire`.
#![no_main]

use cleave_proto::inference::ModelInferRequest;
use cleave_proto::wire::{self, Limits};
use libfuzzer_sys::fuzz_target;
use prost::Message;

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
    let _ = wire::get_int(&req.parameters, wire::PARAM_PROBE);
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
        && let Ok(Some(s)) = wire::get_str(&req.parameters, wire::PARAM_INPUT_SHAPES)
    {
        let _ = wire::parse_input_shapes(s, &limits);
    }
});

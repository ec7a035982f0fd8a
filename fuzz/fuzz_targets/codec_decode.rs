//! Feeds an arbitrary encoded tensor (codec, shape, compression, quantization parameters and
//! payload: see `codec_case.rs` for the format) to `cleave_codec::decode`, the entry point every
//! codec-encoded input goes through (element-wise codecs, the LZ4 stage, JPEG), and to the size
//! functions that take a shape. A panic, an out-of-memory or a decoded tensor of the wrong length
//! is a finding; a panic inside the JPEG decoder (a dependency), which the codec catches and
//! turns into an error, is not.
#![no_main]

mod codec_case;

use cleave_codec::quant::volume;
use cleave_graph::DType;
use libfuzzer_sys::fuzz_target;

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
    let enc = codec_case::from_bytes(data);
    // The sizes the planner asks of any shape: saturating, never a panic.
    let _ = enc.codec.estimated_len(DType::F32, &enc.shape);
    let _ = enc.codec.applies_to(DType::F32, &enc.shape);
    if let Ok(values) = cleave_codec::decode(&enc) {
        let n = volume(&enc.shape).expect("a decoded shape has a volume");
        assert_eq!(values.len(), n, "{} decoded {} values for shape {:?}", enc.codec, values.len(), enc.shape);
        let _ = cleave_codec::error_bound(&enc, values.first().copied().unwrap_or(0.0));
    }
});

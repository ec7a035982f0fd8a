//! Feeds arbitrary bytes to the ONNX loader and, when they load, to cut enumeration and part
//! extraction. A panic in cleave's code is a finding. A panic inside tract is caught by the
//! loader's engine guard and becomes an error, as it does for users; such panics do not abort
//! (the hook below lets them unwind to the guard), so the fuzzer keeps exploring cleave's code.
#![no_main]

use cleave_graph::{InputShapes, ModelGraph};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: {
    let abort_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !cleave_graph::error::in_engine_call() {
            abort_hook(info);
        }
    }));
}, |data: &[u8]| {
    if let Ok(g) = ModelGraph::from_bytes(data, &InputShapes::none()) {
        let cuts = g.cuts();
        assert_eq!(cuts.len(), g.num_cuts());
        if g.last_cut() >= 2 {
            let _ = g.split(&[g.last_cut() / 2]);
        }
    }
});

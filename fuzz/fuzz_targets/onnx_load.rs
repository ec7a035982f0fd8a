//! Feeds arbitrary bytes to the ONNX loader and, when they load, to cut enumeration and part
//! extraction. Any panic (including one inside tract) is a finding.
#![no_main]

use cleave_graph::{InputShapes, ModelGraph};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = ModelGraph::from_bytes(data, &InputShapes::none()) {
        let cuts = g.cuts();
        assert_eq!(cuts.len(), g.num_cuts());
        if g.last_cut() >= 2 {
            let _ = g.split(&[g.last_cut() / 2]);
        }
    }
});

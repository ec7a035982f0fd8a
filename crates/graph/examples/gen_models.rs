//! Regenerates the models the repository ships: `cargo run -p cleave-graph --example gen_models`.
//! A test checks that the committed files equal what this writes.

use prost::Message;

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    std::fs::create_dir_all(&root)?;
    let path = root.join("tiny_resnet.onnx");
    std::fs::write(
        &path,
        cleave_graph::build::zoo::tiny_resnet(cleave_graph::build::zoo::TINY_RESNET_SEED).encode_to_vec(),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

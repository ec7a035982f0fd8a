//! `cleave inspect`: every candidate cut of a model.

use anyhow::Result;
use serde_json::json;

use crate::model_arg::ModelArgs;
use crate::output::{human_bytes, kib, mflops, names, shape, table};

/// List every place a model can be cut, with the tensors crossing each cut, their size, and the
/// compute and weights on each side.
///
/// Cut k lies after the first k compute nodes in execution order. Cut 0 sends the raw input
/// (full offload); the last cut keeps everything on the device. A cut marked `*` is a natural
/// bottleneck: a single tensor crosses it. Inside a residual block or an Inception module
/// several tensors cross. Cut indices are the ones `split`, `infer` and `plan` take.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Print JSON on stdout: `model` and a `cuts` array in cut order.
    #[arg(long)]
    pub json: bool,

    /// Also list the compute nodes with their cost.
    #[arg(long)]
    pub nodes: bool,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let g = &loaded.graph;
    let cuts = g.cuts();
    let total = g.total_cost();
    if args.json {
        let mut out = json!({
            "model": {
                "name": g.name(),
                "source": loaded.source,
                "sha256": g.sha256(),
                "inputs": g.inputs(),
                "outputs": g.outputs(),
                "compute_nodes": g.nodes().len(),
                "num_cuts": g.num_cuts(),
                "flops": total.flops,
                "macs": total.macs,
                "param_bytes": g.param_bytes(),
                "exits": g.exits().iter().map(|e| json!({"name": e, "first_cut_after": g.first_cut_after(e)})).collect::<Vec<_>>(),
            },
            "cuts": cuts,
        });
        if args.nodes {
            out["nodes"] = serde_json::to_value(g.nodes())?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!("model    {}  ({})  sha256 {}", g.name(), loaded.source, &g.sha256()[..12]);
    for i in g.inputs() {
        println!("input    {} {} {}", i.name, i.dtype, shape(&i.shape));
    }
    for o in g.outputs() {
        let exit = match g.exits().contains(&o.name) {
            true => {
                format!("  early exit: a head reaching cut {} computes it", g.first_cut_after(&o.name).unwrap_or(0))
            }
            false => String::new(),
        };
        println!("output   {} {} {}{exit}", o.name, o.dtype, shape(&o.shape));
    }
    println!(
        "compute  {} nodes, {} MFLOPs ({} MMACs), weights {}",
        g.nodes().len(),
        mflops(total.flops),
        mflops(total.macs),
        human_bytes(g.param_bytes())
    );
    println!(
        "cuts     {} (0 = send the input, {} = all on the device; * = single-tensor bottleneck)\n",
        cuts.len(),
        g.last_cut()
    );

    if args.nodes {
        let mut t = table(&["#", "node", "op", "MFLOPs", "weights KiB", "output"], &[0, 3, 4]);
        for (i, n) in g.nodes().iter().enumerate() {
            let out = n.outputs.first().map(|&o| shape(&g.tensor(o).shape)).unwrap_or_default();
            t.add_row(vec![
                i.to_string(),
                n.name.clone(),
                n.op_type.clone(),
                mflops(n.cost.flops),
                kib(n.cost.param_bytes),
                out,
            ]);
        }
        println!("{t}\n");
    }

    let mut t = table(
        &["cut", "after", "crossing", "KiB", "head MFLOPs", "tail MFLOPs", "head weights KiB", ""],
        &[0, 3, 4, 5, 6],
    );
    for c in &cuts {
        let after = match (&c.after, &c.after_op) {
            (Some(n), Some(op)) => format!("{} ({op})", truncate(n, 28)),
            _ => "(input)".into(),
        };
        let crossing: Vec<String> = c.tensors.iter().map(|t| t.name.clone()).collect();
        let crossing = if crossing.is_empty() { "(nothing: device only)".into() } else { names(&crossing, 36) };
        t.add_row(vec![
            c.index.to_string(),
            after,
            crossing,
            kib(c.bytes),
            mflops(c.head_flops),
            mflops(c.tail_flops),
            kib(c.head_param_bytes),
            if c.bottleneck { "*".into() } else { String::new() },
        ]);
    }
    println!("{t}");
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

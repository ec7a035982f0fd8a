//! `cleave calibrate`: what early exits and feature codecs cost in accuracy, on labelled data.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use cleave_codec::{Codec, EncodeOptions};
use cleave_cost::{Calibration, CutCodecAccuracy, ExitCalibration, ThresholdPoint, argmax, confidence};
use cleave_data::Labelled;
use cleave_engine::{DatumType, Engine, EngineConfig, Tensor, TensorMap};
use cleave_graph::ModelGraph;
use indicatif::{ProgressBar, ProgressStyle};

use crate::model_arg::ModelArgs;
use crate::output::{human_bytes, table};

/// Measure a classifier's accuracy at every early exit and at cuts × codecs, on labelled data.
///
/// The data is an .npz with `x` (one sample per row, in the units the model takes: a uint8
/// image set is cast to float without scaling) and `y` (integer labels), e.g.
/// `np.savez("test.npz", x=images, y=labels)`. A sample's prediction is the argmax of an
/// output; an exit's confidence is its largest softmax probability.
///
/// It reports:
///   - the accuracy of the final output and of every exit (exits from the model's
///     `cleave.exits` metadata or `--exits`);
///   - for each exit and confidence threshold: the fraction of samples answered at the exit
///     and the accuracy of the policy "answer at the exit when confident, else go on";
///   - for each measured cut × codec: the final output's accuracy when the tensors crossing
///     the cut are encoded and decoded with the codec (per tensor, as `cleave run` sends them),
///     and the bytes sent (for JPEG, whose size depends on the picture, the mean over the
///     samples). A codec is measured only at the cuts it can carry: JPEG (`jpeg90`, any
///     `jpegN`) where the boundary is an image (NCHW, 1 or 3 channels), in practice cut 0.
///
/// The JSON (-o) feeds `cleave plan --calibration` and `cleave run --calibration`, which then
/// respect `--max-accuracy-drop` and may use exits.
///
/// Examples:
///   cleave calibrate assets/digits/digits_exits.onnx --data assets/digits/test.npz -o calib.json
///   cleave calibrate model.onnx --data val.npz --cuts 3,7 --codecs int8,int4 --limit 500
///   cleave calibrate model.onnx --data val.npz --cuts 0,5 --codecs int8,jpeg90,jpeg75
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Labelled samples: an .npz with arrays `x` and `y`.
    #[arg(long, value_name = "NPZ")]
    pub data: PathBuf,

    /// Write the calibration JSON here.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Also write the tables as Markdown here.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,

    /// Also plot each exit's exit rate against the policy's accuracy (.png or .svg).
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,

    /// The model output that is the final answer (default: the last one computed that is not an
    /// exit).
    #[arg(long, value_name = "NAME")]
    pub final_output: Option<String>,

    /// Codecs to measure at each cut (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "fp16,int8,int4,int2")]
    pub codecs: Vec<Codec>,

    /// Cuts to measure (comma-separated indices, or `all`). Default: every cut when there are
    /// at most --max-cuts, else that many spread evenly over the model.
    #[arg(long, value_name = "LIST")]
    pub cuts: Option<String>,

    /// With the default --cuts: how many cuts at most.
    #[arg(long, default_value_t = 12)]
    pub max_cuts: usize,

    /// Use only the first N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Confidence thresholds to tabulate for each exit (comma-separated, 0..1).
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.97,0.98,0.99,0.995,0.999")]
    pub thresholds: Vec<f64>,

    /// Worker threads (each runs one sample at a time); default: the machine's cores.
    #[arg(long)]
    pub jobs: Option<usize>,

    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What one sample gives.
#[derive(Debug, Clone, Default)]
struct SampleResult {
    label: i64,
    final_pred: Option<usize>,
    /// Per exit: prediction and confidence.
    exits: Vec<(Option<usize>, f64)>,
    /// Per measured (cut, codec): prediction of the final output.
    cut_codec: Vec<Option<usize>>,
    /// Per measured (cut, codec): payload bytes of the encoded boundary.
    cut_codec_bytes: Vec<u64>,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    let graph = Arc::new(loaded.graph);
    let file =
        std::fs::File::open(&args.data).with_context(|| format!("cannot open --data {}", args.data.display()))?;
    let data =
        Labelled::from_npz(std::io::BufReader::new(file)).with_context(|| format!("--data {}", args.data.display()))?;
    if data.is_empty() {
        bail!("--data {} holds no samples", args.data.display());
    }
    let n = args.limit.unwrap_or(usize::MAX).min(data.len());
    if args.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
        bail!("--thresholds must lie in 0..1");
    }
    let inputs = graph.inputs();
    let [input] = inputs.as_slice() else {
        bail!("calibrate handles models with one input; this one has {}", inputs.len());
    };
    let final_name = final_output(&graph, args.final_output.as_deref())?;
    let cuts = chosen_cuts(&graph, args.cuts.as_deref(), args.max_cuts)?;
    let codecs: Vec<Codec> = args.codecs.iter().copied().filter(|c| !c.is_lossless()).collect();
    let all_cuts = graph.cuts();
    let applies =
        |c: usize, q: Codec| q.applies_to_boundary(all_cuts[c].tensors.iter().map(|t| (t.dtype, t.shape.as_slice())));
    let pairs: Vec<(usize, Codec)> =
        cuts.iter().flat_map(|&c| codecs.iter().map(move |&q| (c, q))).filter(|&(c, q)| applies(c, q)).collect();
    for &q in &codecs {
        let skipped: Vec<String> = cuts.iter().filter(|&&c| !applies(c, q)).map(|c| c.to_string()).collect();
        if !skipped.is_empty() && !args.quiet {
            eprintln!(
                "{q} does not apply at cut(s) {} (their boundary is not an image it can encode): skipped",
                skipped.join(", ")
            );
        }
    }

    let engine = Arc::new(Engine::new(EngineConfig { threads: 1, cache_capacity: 2 * cuts.len() + 4 }));
    let exits = graph.exits().to_vec();
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(n as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} samples, {per_sec}, eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("calibrating {} cuts × {} codecs", cuts.len(), codecs.len()));
        bar
    };
    let dtype = input.dtype.datum_type();
    let next = AtomicUsize::new(0);
    let worker = || -> Result<Vec<(usize, SampleResult)>> {
        let mut out = vec![];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(out);
            }
            let x = data.sample(i, &input.shape, dtype).with_context(|| format!("--data {}", args.data.display()))?;
            let mut feed = TensorMap::new();
            feed.insert(input.name.clone(), Arc::new(x));
            let r = measure_sample(&engine, &graph, &feed, &final_name, &exits, &pairs)
                .with_context(|| format!("sample {i}"))?;
            out.push((i, SampleResult { label: data.labels()[i], ..r }));
            progress.inc(1);
        }
    };
    let mut results: Vec<(usize, SampleResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs).map(|_| s.spawn(worker)).collect();
        let mut all = vec![];
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("a calibration worker panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    progress.finish_and_clear();
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<SampleResult> = results.into_iter().map(|(_, r)| r).collect();

    let calibration = summarise(&graph, &results, &exits, &pairs, &args.thresholds);
    let md = markdown(&graph, &loaded.source, &calibration, &final_name);
    print_tables(&calibration, &final_name);
    if let Some(p) = &args.output {
        std::fs::write(p, serde_json::to_string_pretty(&calibration)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        if calibration.exits.is_empty() {
            bail!("--plot draws the exits' curves, and this model declares no exits (see --exits)");
        }
        let curves: Vec<crate::plot::ExitCurve> = calibration
            .exits
            .iter()
            .map(|e| crate::plot::ExitCurve {
                name: e.name.clone(),
                points: e.thresholds.iter().map(|t| (t.exit_rate, t.accuracy)).collect(),
            })
            .collect();
        let caption = format!("{}: early exits on {} labelled samples", calibration.model, calibration.samples);
        crate::plot::exit_curves(p, &caption, &curves, calibration.baseline_accuracy)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.markdown {
        std::fs::write(p, md).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The output taken as the model's answer.
fn final_output(graph: &ModelGraph, given: Option<&str>) -> Result<String> {
    let outputs = graph.outputs();
    if let Some(name) = given {
        if !outputs.iter().any(|o| o.name == name) {
            bail!(
                "--final-output `{name}` is not an output (outputs: {})",
                outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(name.to_owned());
    }
    let born = |name: &str| graph.first_cut_after(name).unwrap_or(0);
    outputs
        .iter()
        .filter(|o| !graph.exits().contains(&o.name) && o.dtype.is_float())
        .max_by_key(|o| born(&o.name))
        .map(|o| o.name.clone())
        .context("the model has no floating-point output that is not an exit")
}

/// The cuts to measure: given, or every interior cut, thinned evenly to `max`.
fn chosen_cuts(graph: &ModelGraph, given: Option<&str>, max: usize) -> Result<Vec<usize>> {
    let last = graph.last_cut();
    let all: Vec<usize> = (0..last).collect();
    match given {
        Some("all") => Ok(all),
        Some(list) => {
            let mut cuts = vec![];
            for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let c: usize = s.parse().with_context(|| format!("--cuts: `{s}` is not a cut index"))?;
                graph.check_cut(c)?;
                if c == last {
                    bail!("--cuts: cut {c} is the last cut: nothing crosses it, so no codec applies");
                }
                cuts.push(c);
            }
            cuts.sort_unstable();
            cuts.dedup();
            Ok(cuts)
        }
        None if all.len() <= max => Ok(all),
        None => {
            let max = max.max(1);
            let mut cuts: Vec<usize> =
                (0..max).map(|k| all[(k * (all.len() - 1)) / (max - 1).max(1)]).collect::<Vec<_>>();
            cuts.dedup();
            Ok(cuts)
        }
    }
}

fn scores(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.cast_to::<f32>()?;
    Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
}

/// Encodes and decodes every float tensor of `env` with `codec`, as the wire would; with the
/// payload bytes (other tensors travel raw).
fn through_codec(env: &TensorMap, codec: Codec) -> Result<(TensorMap, u64)> {
    let mut out = TensorMap::new();
    let mut bytes = 0u64;
    for (name, t) in env {
        if t.datum_type() != DatumType::F32 {
            bytes += (t.len() * t.datum_type().size_of()) as u64;
            out.insert(name.clone(), t.clone());
            continue;
        }
        let x: Vec<f32> = t.to_plain_array_view::<f32>()?.iter().copied().collect();
        let enc = cleave_codec::encode(&x, t.shape(), EncodeOptions { codec, per_channel: false, lz4: false })
            .with_context(|| format!("encoding `{name}` with {codec}"))?;
        bytes += enc.payload.len() as u64;
        let y = cleave_codec::decode(&enc)?;
        out.insert(name.clone(), Arc::new(Tensor::from_shape(t.shape(), &y)?));
    }
    Ok((out, bytes))
}

fn measure_sample(
    engine: &Engine,
    graph: &ModelGraph,
    feed: &TensorMap,
    final_name: &str,
    exits: &[String],
    pairs: &[(usize, Codec)],
) -> Result<SampleResult> {
    let whole = engine.run(&*engine.whole(graph)?, feed)?;
    let get = |m: &TensorMap, n: &str| m.get(n).cloned().with_context(|| format!("the model did not output `{n}`"));
    let final_pred = argmax(&scores(&*get(&whole, final_name)?)?);
    let mut exit_results = vec![];
    for e in exits {
        let s = scores(&*get(&whole, e)?)?;
        exit_results.push((argmax(&s), confidence(&s)));
    }
    let last = graph.last_cut();
    let mut cut_codec = Vec::with_capacity(pairs.len());
    let mut cut_codec_bytes = Vec::with_capacity(pairs.len());
    let mut head: Option<(usize, TensorMap)> = None;
    for &(cut, codec) in pairs {
        if head.as_ref().is_none_or(|(c, _)| *c != cut) {
            let env = if cut == 0 { feed.clone() } else { engine.run(&*engine.part(graph, 0, cut)?, feed)? };
            let crossing: TensorMap = graph
                .cut(cut)?
                .tensors
                .iter()
                .map(|t| get(&env, &t.name).map(|v| (t.name.clone(), v)))
                .collect::<Result<_>>()?;
            head = Some((cut, crossing));
        }
        let crossing = &head.as_ref().expect("head computed").1;
        let (decoded, bytes) = through_codec(crossing, codec)?;
        cut_codec_bytes.push(bytes);
        let tail = engine.run(&*engine.part(graph, cut, last)?, &decoded)?;
        cut_codec.push(match tail.get(final_name) {
            Some(t) => argmax(&scores(t)?),
            // The final output was computed by the head: the codec cannot change it.
            None => final_pred,
        });
    }
    Ok(SampleResult { label: 0, final_pred, exits: exit_results, cut_codec, cut_codec_bytes })
}

fn accuracy(hits: usize, n: usize) -> f64 {
    if n == 0 { 0.0 } else { hits as f64 / n as f64 }
}

fn hit(pred: Option<usize>, label: i64) -> bool {
    pred.is_some_and(|p| p as i64 == label)
}

fn summarise(
    graph: &ModelGraph,
    results: &[SampleResult],
    exits: &[String],
    pairs: &[(usize, Codec)],
    thresholds: &[f64],
) -> Calibration {
    let n = results.len();
    let baseline = accuracy(results.iter().filter(|r| hit(r.final_pred, r.label)).count(), n);
    let exits = exits
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let acc = accuracy(results.iter().filter(|r| hit(r.exits[k].0, r.label)).count(), n);
            let mut ts: Vec<f64> = thresholds.to_vec();
            ts.sort_by(f64::total_cmp);
            ts.dedup();
            let points = ts
                .iter()
                .map(|&t| {
                    let (mut exited, mut right) = (0, 0);
                    for r in results {
                        let (pred, conf) = r.exits[k];
                        if conf >= t {
                            exited += 1;
                            right += hit(pred, r.label) as usize;
                        } else {
                            right += hit(r.final_pred, r.label) as usize;
                        }
                    }
                    ThresholdPoint { threshold: t, exit_rate: accuracy(exited, n), accuracy: accuracy(right, n) }
                })
                .collect();
            ExitCalibration { name: name.clone(), accuracy: acc, thresholds: points }
        })
        .collect();
    let cut_specs = graph.cuts();
    let cuts = pairs
        .iter()
        .enumerate()
        .map(|(j, &(cut, codec))| CutCodecAccuracy {
            cut,
            codec: codec.name().to_owned(),
            accuracy: accuracy(results.iter().filter(|r| hit(r.cut_codec[j], r.label)).count(), n),
            // Exact for element-wise codecs; JPEG's size depends on the picture: the mean.
            bytes: if codec.has_exact_len() {
                cut_specs[cut].tensors.iter().map(|t| codec.estimated_len(t.dtype, &t.shape)).sum()
            } else {
                (results.iter().map(|r| r.cut_codec_bytes[j] as f64).sum::<f64>() / n.max(1) as f64).round() as u64
            },
        })
        .collect();
    Calibration {
        format: Calibration::FORMAT.into(),
        model: graph.name().to_owned(),
        model_sha256: graph.sha256().to_owned(),
        samples: n,
        baseline_accuracy: baseline,
        exits,
        cuts,
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn print_tables(c: &Calibration, final_name: &str) {
    println!("{}: {} labelled samples", c.model, c.samples);
    let mut t = table(&["output", "accuracy"], &[1]);
    for e in &c.exits {
        t.add_row(vec![format!("{} (exit)", e.name), pct(e.accuracy)]);
    }
    t.add_row(vec![format!("{final_name} (final)"), pct(c.baseline_accuracy)]);
    println!("{t}");
    for e in &c.exits {
        let mut t = table(&["threshold", "exit rate", "policy accuracy", "drop"], &[0, 1, 2, 3]);
        for p in &e.thresholds {
            t.add_row(vec![
                format!("{:.3}", p.threshold),
                pct(p.exit_rate),
                pct(p.accuracy),
                pct((c.baseline_accuracy - p.accuracy).max(0.0)),
            ]);
        }
        println!("exit {}: answer there when its confidence ≥ threshold\n{t}", e.name);
    }
    if !c.cuts.is_empty() {
        let mut t = table(&["cut", "codec", "sent", "accuracy", "drop"], &[0, 2, 3, 4]);
        for e in &c.cuts {
            t.add_row(vec![
                e.cut.to_string(),
                e.codec.clone(),
                human_bytes(e.bytes),
                pct(e.accuracy),
                pct((c.baseline_accuracy - e.accuracy).max(0.0)),
            ]);
        }
        println!("final output with the features at each cut sent through each codec\n{t}");
    }
}

/// The same tables as Markdown.
fn markdown(graph: &ModelGraph, source: &str, c: &Calibration, final_name: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "### {} ({} labelled samples)\n", graph.name(), c.samples);
    let _ = writeln!(s, "Model `{source}`, sha256 `{}`.\n", &c.model_sha256[..16.min(c.model_sha256.len())]);
    let _ = writeln!(s, "| output | accuracy |\n|---|---:|");
    for e in &c.exits {
        let _ = writeln!(s, "| `{}` (exit) | {} |", e.name, pct(e.accuracy));
    }
    let _ = writeln!(s, "| `{final_name}` (final) | {} |\n", pct(c.baseline_accuracy));
    for e in &c.exits {
        let _ = writeln!(s, "Exit `{}`: answer there when its confidence ≥ threshold, else go on.\n", e.name);
        let _ = writeln!(s, "| threshold | exit rate | policy accuracy |\n|---:|---:|---:|");
        for p in &e.thresholds {
            let _ = writeln!(s, "| {:.3} | {} | {} |", p.threshold, pct(p.exit_rate), pct(p.accuracy));
        }
        s.push('\n');
    }
    if !c.cuts.is_empty() {
        let cuts: Vec<usize> = {
            let mut v: Vec<usize> = c.cuts.iter().map(|e| e.cut).collect();
            v.dedup();
            v
        };
        let codecs: Vec<&str> = {
            let mut v: Vec<&str> = vec![];
            for e in &c.cuts {
                if !v.contains(&e.codec.as_str()) {
                    v.push(&e.codec);
                }
            }
            v
        };
        let all_cuts = graph.cuts();
        let _ =
            writeln!(s, "Final-output accuracy (and bytes sent) with the features at each cut through each codec:\n");
        let _ = write!(s, "| cut | after | fp32 bytes |");
        for q in &codecs {
            let _ = write!(s, " {q} |");
        }
        let _ = write!(s, "\n|---:|---|---:|");
        for _ in &codecs {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        for cut in cuts {
            let spec = &all_cuts[cut];
            let _ = write!(
                s,
                "| {cut} | {} | {} |",
                spec.after_op.as_deref().unwrap_or("(input)"),
                human_bytes(spec.bytes)
            );
            for q in &codecs {
                match c.cuts.iter().find(|e| e.cut == cut && e.codec == *q) {
                    Some(e) => {
                        let _ = write!(s, " {} ({}) |", pct(e.accuracy), human_bytes(e.bytes));
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

//! Writes a labelled text-line dataset for the PP-OCR direction classifier.
//!
//! ```text
//! cargo run -p cleave-testkit --example textlines -- --n 1000 --seed 7 -o /tmp/textlines.npz [--png sheet.png]
//! ```
//!
//! `x`: float32 [N, 3, 48, 192] (PaddleOCR's cls preprocessing), `y`: int64 [N] (0 upright,
//! 1 rotated 180°). Fonts: `$CLEAVE_FONT`, else DejaVu from `fonts-dejavu-core`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cleave_testkit::textlines::{self, NO_FONT_HINT};

const USAGE: &str = "usage: textlines [--n N] [--seed SEED] -o OUT.npz [--png SHEET.png] [--sheet-count K]";

struct Args {
    n: usize,
    seed: u64,
    out: PathBuf,
    png: Option<PathBuf>,
    sheet_count: usize,
}

fn parse() -> Result<Args, String> {
    let (mut n, mut seed, mut out, mut png, mut sheet_count) = (1000, 7, None, None, 32);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--n" | "-n" => n = value.parse().map_err(bad)?,
            "--seed" => seed = value.parse().map_err(bad)?,
            "-o" | "--out" => out = Some(PathBuf::from(&value)),
            "--png" => png = Some(PathBuf::from(&value)),
            "--sheet-count" => sheet_count = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
        }
    }
    let out = out.ok_or_else(|| format!("missing -o OUT.npz\n{USAGE}"))?;
    Ok(Args { n, seed, out, png, sheet_count })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let fonts = textlines::find_fonts();
    if fonts.is_empty() {
        eprintln!("error: {NO_FONT_HINT}");
        return ExitCode::FAILURE;
    }
    let t0 = Instant::now();
    let samples = match textlines::render(args.n, args.seed, &fonts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let render_time = t0.elapsed();
    if let Err(e) = textlines::write_npz(&args.out, &samples) {
        eprintln!("error: {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let rotated = samples.iter().filter(|s| s.label == 1).count();
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} lines ({} upright, {rotated} rotated), seed {}, {} font(s), rendered in {:.2} s, {:.1} MB",
        args.out.display(),
        samples.len(),
        samples.len() - rotated,
        args.seed,
        fonts.len(),
        render_time.as_secs_f64(),
        size as f64 / 1e6
    );
    if let Some(png) = &args.png {
        let shown = &samples[..args.sheet_count.min(samples.len())];
        if let Err(e) = textlines::write_contact_sheet(png, shown, 2) {
            eprintln!("error: {}: {e}", png.display());
            return ExitCode::FAILURE;
        }
        println!("{}: {} lines (green frame: upright, red: rotated 180°)", png.display(), shown.len());
        for (i, s) in shown.iter().enumerate() {
            println!("  {i:3} [{}] {}", textlines::LABELS[s.label as usize], s.text);
        }
    }
    ExitCode::SUCCESS
}

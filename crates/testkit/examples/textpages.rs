//! Writes pages of text for the PP-OCR text detector.
//!
//! ```text
//! cargo run -p cleave-testkit --example textpages -- --n 16 --seed 7 -o /tmp/pages.npz [--png sheet.png]
//! ```
//!
//! `x`: uint8 [N, 3, 480, 640], NCHW, RGB, raw 0..255; `boxes`: int32 [K, 5] (page, x0, y0, x1,
//! y1 of each line's ink). The detector's input for page `i` is frame `i` of
//! `cleave_data::image_frames_as(x, Normalize::imagenet(), ChannelOrder::Bgr)` (PaddleOCR's
//! det preprocessing: BGR, `(v/255 − mean)/std`). Fonts: `$CLEAVE_FONT`, else DejaVu from
//! `fonts-dejavu-core`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cleave_testkit::textlines::{self, NO_FONT_HINT};
use cleave_testkit::textpages;

const USAGE: &str = "usage: textpages [--n N] [--seed SEED] -o OUT.npz [--png SHEET.png]";

struct Args {
    n: usize,
    seed: u64,
    out: PathBuf,
    png: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let (mut n, mut seed, mut out, mut png) = (16, 7, None, None);
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
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
        }
    }
    let out = out.ok_or_else(|| format!("missing -o OUT.npz\n{USAGE}"))?;
    Ok(Args { n, seed, out, png })
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
    let pages = match textpages::render(args.n, args.seed, &fonts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let render_time = t0.elapsed();
    if let Err(e) = textpages::write_npz(&args.out, &pages) {
        eprintln!("error: {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let lines: usize = pages.iter().map(|p| p.boxes.len()).sum();
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} pages of {}×{} with {lines} lines, seed {}, {} font(s), rendered in {:.2} s, {:.1} MB",
        args.out.display(),
        pages.len(),
        textpages::WIDTH,
        textpages::HEIGHT,
        args.seed,
        fonts.len(),
        render_time.as_secs_f64(),
        size as f64 / 1e6
    );
    if let Some(png) = &args.png {
        if let Err(e) = textpages::write_contact_sheet(png, &pages, None, 4) {
            eprintln!("error: {}: {e}", png.display());
            return ExitCode::FAILURE;
        }
        println!("{}: the pages at half size, lines framed green", png.display());
    }
    ExitCode::SUCCESS
}

//! `cleave`: the command-line front end. This is the only place that reads arguments and the
//! environment, sets up logging, and touches files on behalf of the libraries.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod model_arg;
mod npy;
mod output;
mod plot;

/// cleave: collaborative DNN inference. Cut any ONNX model into parts, run the head on the
/// device and the tail on an edge or cloud server.
///
/// `cleave demo` shows the whole thing in under a minute: a device and an edge process, a
/// shaped link replaying a changing bandwidth, and the adaptive device choosing where to cut for
/// every frame, against every baseline.
///
/// Then `cleave inspect MODEL` shows every place the model can be cut: the tensors that
/// would cross the network, their size, and the compute on each side. `cleave split` writes the
/// parts as standalone ONNX files; `cleave infer` runs head → tail and checks it against the
/// whole model. Every command that takes a MODEL runs on a small built-in demo model when none is
/// given.
#[derive(Parser, Debug)]
#[command(name = "cleave", version, max_term_width = 100)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). Logs go to stderr; RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Demo(cmd::demo::Args),
    Inspect(cmd::inspect::Args),
    Split(cmd::split::Args),
    Export(cmd::export::Args),
    Infer(cmd::infer::Args),
    Profile(cmd::profile::Args),
    Plan(cmd::plan::Args),
    Serve(cmd::serve::Args),
    Run(Box<cmd::run::Args>),
    Calibrate(cmd::calibrate::Args),
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
}

impl Command {
    /// Whether this command runs an inference device: one that computes the same model frame
    /// after frame, often under a CPU quota ([`keep_freed_memory`]).
    fn runs_a_device(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Bench(cmd::bench::Bench::TraceDevice))
    }
}

/// Makes glibc's allocator keep the memory one inference frees for the next, in a device
/// process, instead of handing it back to the OS and faulting it in again (each minor fault
/// also zeroes a page, on the device's own CPU time).
///
/// By default glibc gives each busy thread its own arena, maps large blocks (a feature map, an
/// im2col buffer) with their own `mmap` until frees raise its threshold, and trims free memory
/// off the top of each arena. A device computes on two threads (its heads and its racing tail,
/// [`cleave_node::adaptive::DeviceThreads`]), while others encode, send and receive. In `bench
/// trace` runs of PP-OCR det (640 × 480) at 15 % of a core, the first frames of a run and the
/// first race that ran to the end took 6400–19200 minor page faults each (up to 138 ms of CPU
/// where a frame computed at home takes about 90, i.e. hundreds of ms of latency). With one
/// arena, blocks up to 32 MiB (glibc's largest threshold) from the heap, and trimming only past
/// 1 GiB of free top, the same run on the ATT trace (`--hedge eager`) had 0 faults on every
/// adaptive frame, where the run before it had 19214, 6401 and 12212 on three of them, and 1 on
/// the first device-only frame instead of 6402 (`MALLOC_ARENA_MAX=1
/// MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`, the environment form of
/// these settings). The thresholds alone (tried first) did not change the
/// counts: the threads' own arenas still came and went. A device keeps its peak heap, as an
/// inference runtime's memory arena does. Servers are left as they are: their many request
/// threads would share the one arena's lock. Any of the three `MALLOC_*` variables in the
/// environment leaves that setting to glibc.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        for (var, param, value) in [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 32 << 20),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 1 << 30),
        ] {
            if std::env::var_os(var).is_none() {
                // SAFETY: mallopt only sets allocator parameters; called before any other
                // thread starts.
                unsafe { libc::mallopt(param, value) };
            }
        }
    }
}

fn main() -> ExitCode {
    // A panic inside the inference engine is caught and reported as a one-line error; don't
    // also print the panic message. Any other panic is a bug and prints as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !cleave_graph::error::in_engine_call() {
            default_hook(info);
        }
    }));
    let cli = Cli::parse();
    if cli.command.runs_a_device() {
        keep_freed_memory();
    }
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Split(a) => cmd::split::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Infer(a) => cmd::infer::run(a),
        Command::Profile(a) => cmd::profile::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Run(a) => cmd::run::run(*a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::Bench(b) => cmd::bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,cleave=debug",
        _ => "debug,cleave=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

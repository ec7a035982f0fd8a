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

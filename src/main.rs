use std::process::ExitCode;

use clap::Parser;
use expertcast::cli::{Cli, Command};

/// The C library's allocator, keeping freed memory and advising its heaps for huge
/// pages ([`expertcast::memory`]).
#[global_allocator]
static ALLOCATOR: expertcast::memory::Allocator = expertcast::memory::Allocator;

fn main() -> ExitCode {
    expertcast::memory::tune();
    // Die quietly on a closed pipe (`expertcast sweep --dry-run | head`), as other
    // command-line tools do, instead of panicking in println!.
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    expertcast::trace::quiet_decoder_panics();
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => expertcast::cli::run(args, &argv),
        Command::Bench(args) => expertcast::bench::bench(args),
        Command::Synth(args) => expertcast::cli::synth(args),
        Command::Sweep(args) => expertcast::cli::sweep::sweep(args),
        Command::Lstm(args) => expertcast::cli::lstm::lstm(args),
        Command::Linear(args) => expertcast::cli::linear::linear(args),
        Command::Report(args) => expertcast::report::report(args),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(expertcast::exit_code(&e))
        }
    };
    // A run that failed while its GPU kernels compiled exits after the compiles.
    expertcast::gpu::finish_prefetches();
    code
}

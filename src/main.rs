//! The `valet` binary: parse the command line and run it (see `valet::cli`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    valet::cli::run(valet::cli::Cli::parse())
}

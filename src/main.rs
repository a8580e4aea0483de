//! The `hermes` binary: parses the command line and dispatches.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = hermes::cli::Cli::parse();
    match hermes::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The `hermes` binary: parses the command line and dispatches.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = hermes::cli::Cli::parse();
    match hermes::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Ctrl-C at the passphrase prompt: the status a shell gives SIGINT.
        Err(e) if e.is::<hermes::client::commands::Cancelled>() => {
            eprintln!("hermes: {e}");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("hermes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! Command-line interface: clap options, defaults and environment variables,
//! and dispatch to the shells. Cores never see clap types: each command turns
//! its options into a plain config struct first.

use clap::{Parser, Subcommand};

/// Hermes: end-to-end encrypted group messaging over a relay that learns nothing.
#[derive(Debug, Parser)]
#[command(name = "hermes", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of the one `hermes` binary.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Runs the parsed command line.
///
/// # Errors
/// Returns the command's error, which `main` prints as one line on stderr.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
    }
}

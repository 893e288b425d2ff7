//! `wallet`: the command-line front end of the transfer engine. See `wallet --help`.

// The doc comments of the flags are clap's help text, written for a terminal
// (`[default: ...]`, `redis://[user:password@]host`), not rustdoc links.
#[allow(rustdoc::broken_intra_doc_links)]
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors, --help and --version: clap prints them and exits (2 for errors).
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("wallet: error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

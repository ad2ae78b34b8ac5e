//! The `meerkat` binary: the composition root.
//!
//! # Layout
//! - [`cli`] parses the command line; every command but `start` is a client
//!   of the admin API.
//! - [`config`] reads and validates the TOML file before anything starts.
//! - [`run`] builds storage, router, server workers and modules, opens the
//!   listeners ([`tls`] provides certificates; [`websocket`] serves XMPP over
//!   WebSocket on `[[listen.http]]`) and the [`admin`] API, and shuts all of
//!   it down in order on SIGTERM.
//!
//! **Architecture Invariant:** only this crate knows about HTTP, TOML and
//! process signals.
#![forbid(unsafe_code)]

mod admin;
mod bosh;
mod cli;
mod config;
mod metrics;
mod run;
mod tls;
mod websocket;

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc instead of glibc's malloc: a stanza is a tree of small strings,
/// and glibc's allocator took a fifth of the CPU of a routed message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let cfg = match &cli.config {
        Some(path) => config::Config::load(path),
        None => config::Config::defaults(),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meerkat: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        cli::Command::Start => run::start(cfg),
        cmd => cli::ApiClient::new(&cli, &cfg).and_then(|client| cli::run_admin(&client, cmd)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meerkat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

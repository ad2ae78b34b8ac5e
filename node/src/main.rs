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

/// Transparent huge pages off for the process, unless `MIMALLOC_ALLOW_THP`
/// decides. mimalloc asks for them on its arenas, and the kernel then
/// zeroes 2 MiB at a first touch: measured A/B with `compare.sh`, logins
/// were 8 to 11 % faster without them, and an idle node holds 28 MB
/// instead of 35 MB. The flag is the process's, so it also covers memory
/// mapped before `main`.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
            eprintln!("meerkat: could not turn transparent huge pages off: {e}");
        }
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
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

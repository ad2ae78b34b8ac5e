//! `meerkat-load`: an XMPP load generator. See `meerkat_tests::load` and
//! the "Benchmarks" section of README.md.

fn main() {
    std::process::exit(meerkat_tests::load::main());
}

//! The `braid` command: see `braid --help` and the README.

fn main() {
    std::process::exit(braid::cli::main());
}

//! `runner`: the binary. Parses the command line, runs one command, prints errors in one place and maps
//! them to the documented exit codes (see `runner::exit`).

fn main() {
    let code = runner::cli::main();
    std::process::exit(code);
}

//! `mtl-train`: the command line on top of the `mtl` engine (src/cli/).
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

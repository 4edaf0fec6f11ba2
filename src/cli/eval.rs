//! `mtl-train eval`: re-evaluate a checkpoint on its config's val split.
use super::CheckpointArgs;
use std::process::ExitCode;

pub fn run(args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let restored = args.restore()?;
    let metrics = mtl::train::restore::evaluate(&restored)?;
    print!("{}", mtl::train::report::metrics_table(&format!("eval of {}", restored.dir.display()), &metrics));
    Ok(ExitCode::SUCCESS)
}

//! `mtl-train list [--json]`: what the registries offer (datasets, task kinds, balancing
//! methods, architectures, backbones), for people and, with `--json`, for scripts.
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// One JSON document instead of the table: what tests, sweeps and scripts/mtl_torch.py read.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let catalog = mtl::setup::catalog::catalog()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
    } else {
        print!("{}", table(&catalog));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per entry: its name, then what it offers.
fn table(c: &Value) -> String {
    let entries = |key: &str| c[key].as_array().cloned().unwrap_or_default();
    let options = |v: &Value| -> String {
        let map = v["options"].as_object().cloned().unwrap_or_default();
        map.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    let mut out = String::from("datasets (data.dataset)\n");
    for d in entries("datasets") {
        let targets = match d["targets"].as_array() {
            Some(ts) => ts.iter().map(|t| t["name"].as_str().unwrap_or_default()).collect::<Vec<_>>().join(", "),
            None => "from its files".into(),
        };
        out += &format!("  {:<16}targets: {targets}\n", d["name"].as_str().unwrap_or_default());
    }
    out += "task kinds (tasks[].kind)\n";
    for k in entries("task_kinds") {
        let metrics: Vec<&str> =
            k["metrics"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str()).collect();
        out += &format!("  {:<16}metrics: {}\n", k["name"].as_str().unwrap_or_default(), metrics.join(", "));
    }
    for (key, title) in
        [("methods", "methods (balance.method)"), ("architectures", "architectures (model.architecture.kind)")]
    {
        out += &format!("{title}\n");
        for m in entries(key) {
            let gradient = if m["gradient"] == true { "(gradient) " } else { "" };
            let line = format!("  {:<16}{gradient}{}", m["name"].as_str().unwrap_or_default(), options(&m));
            out += line.trim_end();
            out += "\n";
        }
    }
    let backbones: Vec<&str> = c["backbones"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out += &format!("backbones (model.backbone.kind)\n  {}\n", backbones.join(", "));
    out
}

//! Everything the registries offer, as one JSON document (`mtl-train list --json`): the
//! datasets with their targets and normalization, the task kinds with their metrics, the
//! balancing methods and architectures with every option's default, and the backbones. Tests,
//! sweeps, tables and the PyTorch twin read their names from here, so a new variant is its
//! file and its registry line and nothing else.
use crate::balance;
use crate::config::{Activation, BackboneConfig, BackboneKind, DataConfig, Norm};
use crate::data::{TargetShape, DATASETS};
use crate::model::arch::{self, ARCHITECTURES};
use crate::tasks::{Task, KINDS};
use serde_json::{json, Value};

/// The tasks an architecture's or method's defaults are read for (two: the fewest that is
/// multi-task; no default depends on the count).
const TASKS: usize = 2;

pub fn catalog() -> anyhow::Result<Value> {
    Ok(json!({
        "datasets": datasets(),
        "task_kinds": task_kinds(),
        "methods": methods()?,
        "architectures": architectures()?,
        "backbones": BackboneKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "torchvision_keys": torchvision_keys(),
    }))
}

/// The table between the torchvision ResNets' variable names and torchvision's state-dict
/// keys (`model::torchvision::KEY_TABLE`), for the PyTorch twin.
fn torchvision_keys() -> Value {
    use crate::model::torchvision::{Scope, IGNORED_KEYS, KEY_TABLE};
    let rows: Vec<Value> = KEY_TABLE
        .iter()
        .map(|&(scope, ours, theirs)| {
            let scope = if scope == Scope::Top { "top" } else { "block" };
            json!({"scope": scope, "mtl": ours, "torchvision": theirs})
        })
        .collect();
    json!({"table": rows, "ignored": IGNORED_KEYS})
}

fn datasets() -> Vec<Value> {
    DATASETS
        .iter()
        .map(|d| {
            let (mean, std) = d.normalization();
            // None: the files define the targets (e.g. `folder`).
            let targets = d.targets(&DataConfig::defaults(d.name())).map(|ts| {
                ts.iter()
                    .map(|t| json!({"name": t.name, "shape": shape_name(t.shape), "classes": t.classes}))
                    .collect::<Vec<_>>()
            });
            json!({
                "name": d.name(),
                "targets": targets,
                "normalization": {"mean": mean, "std": std},
                "download": d.source().is_some(),
            })
        })
        .collect()
}

fn shape_name(shape: TargetShape) -> &'static str {
    match shape {
        TargetShape::PerImage => "per_image",
        TargetShape::PerPixel => "per_pixel",
        TargetShape::PerPixelDepth => "per_pixel_depth",
        TargetShape::PerPixelNormal => "per_pixel_normal",
        TargetShape::Binary => "binary",
        TargetShape::Value => "value",
    }
}

fn task_kinds() -> Vec<Value> {
    KINDS
        .iter()
        .map(|&kind| {
            let classes = if kind.has_classes() { 2 } else { 0 };
            let task = Task {
                name: kind.name().into(),
                kind,
                target: String::new(),
                classes,
                label_smoothing: 0.0,
                ignore_index: crate::data::IGNORE_LABEL as i64,
                given: None,
            };
            let metrics: Vec<Value> = task
                .metrics()
                .iter()
                .map(|m| json!({"name": m.name, "higher_is_better": m.higher_is_better}))
                .collect();
            json!({
                "name": kind.name(),
                "target_shape": shape_name(kind.target_shape()),
                "classes": kind.has_classes(),
                "metrics": metrics,
            })
        })
        .collect()
}

fn methods() -> anyhow::Result<Vec<Value>> {
    balance::METHODS
        .iter()
        .map(|m| {
            let facts = balance::facts(m, TASKS)?;
            Ok(json!({"name": m.name, "gradient": facts.gradient, "options": facts.options}))
        })
        .collect()
}

/// Each architecture's options with their defaults, and the backbones it accepts.
fn architectures() -> anyhow::Result<Vec<Value>> {
    let backbone = |kind| BackboneConfig {
        kind,
        widths: vec![8, 16],
        depth: 1,
        norm: Norm::default(),
        activation: Activation::default(),
        output_stride: crate::config::DEFAULT_OUTPUT_STRIDE,
        pretrained: None,
    };
    ARCHITECTURES
        .iter()
        .map(|a| {
            let cfg = crate::config::ArchitectureConfig { kind: a.name.into(), options: Default::default() };
            let (_, options) = arch::plan(&cfg, &backbone(BackboneKind::Conv), TASKS)?;
            let backbones: Vec<&str> = BackboneKind::ALL
                .into_iter()
                .filter(|&k| arch::plan(&cfg, &backbone(k), TASKS).is_ok())
                .map(BackboneKind::name)
                .collect();
            Ok(json!({"name": a.name, "options": options, "backbones": backbones}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_entry_is_listed_once() {
        let c = catalog().unwrap();
        let names = |key: &str| -> Vec<String> {
            c[key].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap_or_default().to_string()).collect()
        };
        assert_eq!(names("datasets").len(), DATASETS.len());
        assert_eq!(names("methods"), balance::method_names());
        assert_eq!(names("architectures"), arch::architecture_names());
        assert_eq!(names("task_kinds"), crate::tasks::kind_names());
        assert_eq!(c["backbones"], json!(["conv", "resnet", "mlp", "resnet18", "resnet34", "resnet50", "resnet101"]));
        assert_eq!(
            c["torchvision_keys"]["table"][0],
            json!({"scope": "top", "mtl": "stem.conv.", "torchvision": "conv1."})
        );
        let mmoe = &c["architectures"].as_array().unwrap()[3];
        assert_eq!((mmoe["name"].as_str(), mmoe["options"]["experts"].as_i64()), (Some("mmoe"), Some(3)));
        assert_eq!(
            c["architectures"][2]["backbones"],
            json!(["conv", "resnet", "resnet18", "resnet34", "resnet50", "resnet101"]),
            "mtan needs feature maps"
        );
        let methods = c["methods"].as_array().unwrap();
        let gradient = |name: &str| methods.iter().find(|m| m["name"] == name).unwrap()["gradient"].as_bool();
        assert_eq!((gradient("dwa"), gradient("pcgrad")), (Some(false), Some(true)));
        let nyuv2 = c["datasets"].as_array().unwrap().iter().find(|d| d["name"] == "nyuv2").unwrap();
        assert_eq!(nyuv2["normalization"]["std"], json!([0.229, 0.224, 0.225]));
        assert_eq!(nyuv2["targets"][1]["shape"], "per_pixel_depth");
    }
}

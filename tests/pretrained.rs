//! `model.backbone.pretrained` refusals: every bad weights file or setting ends as one line
//! naming the file and the problem, exit 2, and no run directory. (Loading good files exactly,
//! against torchvision itself: tests/test_pretrained.py; the download against a local server:
//! tests/download.rs.)
mod common;
use common::*;
use mtl::model::backbone::Backbone;
use mtl::model::torchvision::to_torchvision;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};
use tempfile::tempdir;

/// A one-task config on 32×32 shapes with `backbone`.
fn config(backbone: &str) -> String {
    format!(
        "name: p\nseed: 3\ndevice: cpu\nthreads: 1\n\
         data: {{dataset: shapes, train_size: 8, val_size: 4, image_size: 32, batch_size: 4, eval_batch_size: 4}}\n\
         model:\n  backbone: {{{backbone}}}\n\
         tasks:\n  - {{name: kind, kind: classification, target: kind, classes: 10}}\ntrain: {{epochs: 1}}\n"
    )
}

/// resnet18's variables in torchvision's key names (what `torch.save(resnet18().state_dict())`
/// holds, the classifier aside), with mtl's initial values.
fn resnet18_state_dict() -> Vec<(String, Tensor)> {
    let cfg: mtl::config::BackboneConfig = serde_yaml::from_str("{kind: resnet18}").unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _backbone = Backbone::new(&(vs.root() / "backbone"), &cfg, 3, 0);
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (to_torchvision(name.strip_prefix("backbone.").unwrap()), t.detach()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn save(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

/// Trains `config` in `dir` and expects the one-line refusal with `needles`, and no run.
fn refused(dir: &Path, config: &str, env: &[(&str, &str)], needles: &[&str]) {
    write(dir, "c.yaml", config);
    run_with_env(dir, &["c.yaml", "--run-dir", "run"], env).assert_user_error(needles);
    assert!(!dir.join("run").exists(), "a refused run wrote its directory");
}

#[test]
fn missing_and_unexpected_keys_are_named() {
    let tmp = tempdir().unwrap();
    let mut sd = resnet18_state_dict();
    sd.retain(|(k, _)| k != "layer4.1.bn2.running_var");
    sd.push(("head.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    save(&tmp.path().join("w.safetensors"), &sd);
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: w.safetensors"),
        &[],
        &[
            "model.backbone.pretrained",
            "w.safetensors",
            "missing 'layer4.1.bn2.running_var'",
            "unexpected 'head.weight'",
        ],
    );
}

#[test]
fn a_file_for_another_depth_or_shape_is_refused() {
    let tmp = tempdir().unwrap();
    // resnet50's keys (a third convolution, 3-4-6-3 blocks), whatever the values.
    let mut keys = vec!["conv1.weight".to_string()];
    for (layer, blocks) in [3, 4, 6, 3].into_iter().enumerate() {
        for b in 0..blocks {
            keys.push(format!("layer{}.{b}.conv3.weight", layer + 1));
        }
    }
    let sd: Vec<(String, Tensor)> =
        keys.into_iter().map(|k| (k, Tensor::zeros([1], (Kind::Float, Device::Cpu)))).collect();
    save(&tmp.path().join("r50.safetensors"), &sd);
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: r50.safetensors"),
        &[],
        &["r50.safetensors", "holds resnet50 weights, but model.backbone.kind is resnet18"],
    );
    // resnet18's keys with a stem for one input channel.
    let mut sd = resnet18_state_dict();
    let stem = sd.iter().position(|(k, _)| k == "conv1.weight").unwrap();
    sd[stem].1 = Tensor::zeros([64, 1, 7, 7], (Kind::Float, Device::Cpu));
    save(&tmp.path().join("grey.safetensors"), &sd);
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: grey.safetensors"),
        &[],
        &["'conv1.weight' has shape [64, 1, 7, 7], expected [64, 3, 7, 7]"],
    );
}

#[test]
fn corrupt_files_and_checksum_mismatches_are_refused() {
    let tmp = tempdir().unwrap();
    std::fs::write(tmp.path().join("junk.pth"), b"this is not a zip archive").unwrap();
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: junk.pth"),
        &[],
        &["junk.pth", "not a torch.save zip archive"],
    );
    // A zip whose pickle calls something a state dict never does.
    {
        let file = std::fs::File::create(tmp.path().join("evil.pth")).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        zip.start_file("archive/data.pkl", zip::write::FileOptions::default()).unwrap();
        std::io::Write::write_all(&mut zip, b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap();
        zip.finish().unwrap();
    }
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: evil.pth"),
        &[],
        &["evil.pth", "'os.system'", "refused, not run"],
    );
    save(&tmp.path().join("resnet18-deadbeef.safetensors"), &resnet18_state_dict());
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: resnet18-deadbeef.safetensors"),
        &[],
        &["resnet18-deadbeef.safetensors", "but its name says deadbeef"],
    );
    refused(tmp.path(), &config("kind: resnet18, pretrained: absent.pth"), &[], &["absent.pth: no such file"]);
}

#[test]
fn imagenet_without_network_or_cached_copy_is_refused_and_leaves_no_cache() {
    let tmp = tempdir().unwrap();
    let cache = tmp.path().join("cache").join("weights");
    // Port 9 on the loopback: nothing listens, the connection is refused at once.
    refused(
        tmp.path(),
        &config("kind: resnet18, pretrained: imagenet"),
        &[("MTL_WEIGHTS_CACHE", cache.to_str().unwrap()), ("MTL_WEIGHTS_MIRROR", "http://127.0.0.1:9")],
        &["no cached copy of resnet18-f37072fd.pth", "MTL_WEIGHTS_MIRROR", "http://127.0.0.1:9/resnet18-f37072fd.pth"],
    );
    assert!(!tmp.path().join("cache").exists(), "a failed download left its cache directory");
}

#[test]
fn settings_the_backbone_cannot_have_are_refused() {
    let tmp = tempdir().unwrap();
    for (backbone, needle) in [
        ("kind: resnet18, output_stride: 8", "model.backbone.output_stride: resnet18 is 32 only"),
        ("kind: resnet50, output_stride: 4", "model.backbone.output_stride: 4 must be 32, 16 or 8"),
        (
            "kind: resnet18, widths: [8], pretrained: imagenet",
            "model.backbone.widths: pretrained weights are for base width 64",
        ),
        ("kind: conv, widths: [4, 8], pretrained: imagenet", "model.backbone.pretrained: only the torchvision ResNets"),
        ("kind: resnet, widths: [4], output_stride: 8", "model.backbone.output_stride: only the torchvision ResNets"),
        ("kind: resnet18, depth: 2", "model.backbone.depth: resnet18 has torchvision's block counts"),
    ] {
        refused(tmp.path(), &config(backbone), &[], &[needle]);
    }
    let aspp_on_a_class = config("kind: resnet18").replace("model:\n", "model:\n  heads: {kind: {kind: aspp}}\n");
    refused(
        tmp.path(),
        &aspp_on_a_class,
        &[],
        &["model.heads.kind.kind: aspp is a per-pixel head, but task 'kind' is classification"],
    );
    let rates_without_aspp = config("kind: resnet18").replace("model:\n", "model:\n  heads: {kind: {rates: [6]}}\n");
    refused(tmp.path(), &rates_without_aspp, &[], &["model.heads.kind.rates: only an aspp head has rates"]);
}

/// Published weights under the fine-tuning controls: a resnet18 loaded from a file (values
/// unlike mtl's initialization), its stem and `layer1` frozen by `optim.groups`, BatchNorm
/// frozen, and two stages (one task, then both). The frozen tensors end bit-identical to the
/// file's, BatchNorm statistics included; the rest of the backbone trained away from it.
#[test]
fn pretrained_weights_under_groups_freeze_bn_and_stages() {
    let tmp = tempdir().unwrap();
    tch::manual_seed(11);
    let file: Vec<(String, Tensor)> = resnet18_state_dict()
        .into_iter()
        .map(|(k, t)| match t.kind() {
            Kind::Float if k.ends_with("running_var") => (k, t.rand_like() + 0.5),
            Kind::Float => (k, t.randn_like() * 0.05),
            _ => (k, t),
        })
        .collect();
    save(&tmp.path().join("w.safetensors"), &file);
    let yaml = config("kind: resnet18, pretrained: w.safetensors")
        .replace("model:\n", "model:\n  freeze_bn: true\n")
        .replace(
            "tasks:\n  - {name: kind, kind: classification, target: kind, classes: 10}\n",
            "tasks:\n  - {name: kind, kind: classification, target: kind, classes: 10}\n  \
             - {name: color, kind: classification, target: color, classes: 6}\n",
        )
        .replace(
            "train: {epochs: 1}\n",
            "optim: {kind: adamw, lr: 0.01, groups: [{match: 'backbone.stem.*', freeze: true}, \
             {match: 'backbone.layer1.*', freeze: true}, {match: 'backbone.*', lr_scale: 0.1}]}\n\
             train: {stages: [{epochs: 1, tasks: [kind]}, {epochs: 1, tasks: all}]}\n",
        );
    write(tmp.path(), "c.yaml", &yaml);
    run_in(tmp.path(), &["c.yaml", "--run-dir", "run"]).assert_ok();
    let trained = final_weights(&tmp.path().join("run"));
    let in_file = |name: &str| -> Option<Vec<f64>> {
        let key = to_torchvision(name.strip_prefix("backbone.")?);
        let t = &file.iter().find(|(k, _)| *k == key)?.1;
        Some(Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap())
    };
    let (mut frozen, mut moved) = (0, 0);
    for (name, value) in &trained {
        let Some(loaded) = in_file(name) else { continue };
        let is_norm = name.contains(".bn");
        if name.starts_with("backbone.stem.") || name.starts_with("backbone.layer1.") || is_norm {
            assert_eq!(value, &loaded, "{name} is frozen but differs from the file");
            frozen += 1;
        } else if value != &loaded {
            moved += 1;
        }
    }
    assert!(frozen > 20 && moved > 10, "frozen {frozen}, trained {moved}");
    let recorded = std::fs::read_to_string(tmp.path().join("run/config.yaml")).unwrap();
    assert!(recorded.contains("normalization"), "ImageNet normalization recorded: {recorded}");
}

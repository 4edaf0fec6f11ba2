//! `model.backbone.pretrained`: a torchvision ResNet starts from published weights, either
//! torchvision's IMAGENET1K_V1 files (`imagenet`, downloaded once into a cache outside the run)
//! or a file of the user's (`.pth` as `torch.save(model.state_dict())` writes it, or
//! `.safetensors`), both in torchvision's key names, which `model::torchvision::KEY_TABLE`
//! relates to mtl's. Everything is checked before a variable changes: the depth the file is
//! for, missing and unexpected keys, shapes, values, and the checksum its name carries.
use crate::checkpoint;
use crate::config::{BackboneConfig, BackboneKind};
use crate::data::fetch::{self, Checksum, RemoteFile};
use crate::model::{torchvision, MultiTaskModel};
use crate::{user_bail, user_error};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub use crate::setup::IMAGENET_WEIGHTS as IMAGENET;
/// Moves the weights cache (default: `$XDG_CACHE_HOME/mtl/weights`, else `~/.cache/mtl/weights`).
pub const CACHE_ENV: &str = "MTL_WEIGHTS_CACHE";
/// A base URL that serves the weight files by name (`<mirror>/resnet50-0676ba61.pth`), for
/// machines without access to download.pytorch.org.
pub const MIRROR_ENV: &str = "MTL_WEIGHTS_MIRROR";

const KEY: &str = "model.backbone.pretrained";

/// torchvision's IMAGENET1K_V1 file for `kind` (its name's 8 hex digits start its SHA-256).
pub fn imagenet_file(kind: BackboneKind) -> Option<RemoteFile> {
    let name = match kind {
        BackboneKind::Resnet18 => "resnet18-f37072fd.pth",
        BackboneKind::Resnet34 => "resnet34-b627a593.pth",
        BackboneKind::Resnet50 => "resnet50-0676ba61.pth",
        BackboneKind::Resnet101 => "resnet101-63fe2227.pth",
        _ => return None,
    };
    Some(RemoteFile {
        name: name.into(),
        bytes: None,
        checksum: name_checksum(Path::new(name)),
        urls: vec![format!("https://download.pytorch.org/models/{name}")],
    })
}

/// The SHA-256 prefix a file name carries in torchvision's convention `<name>-<8 hex>.<ext>`.
pub fn name_checksum(path: &Path) -> Option<Checksum> {
    let stem = path.file_stem()?.to_str()?;
    let (_, hash) = stem.rsplit_once('-')?;
    (hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Checksum::Sha256Prefix(hash.into()))
}

/// Where downloaded weights are kept: `$MTL_WEIGHTS_CACHE`, else `$XDG_CACHE_HOME/mtl/weights`,
/// else `$HOME/.cache/mtl/weights`.
pub fn cache_dir() -> PathBuf {
    let var = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(CACHE_ENV) {
        return dir;
    }
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).unwrap_or_else(|| ".".into());
    base.join("mtl").join("weights")
}

/// The weights file `cfg` names: the path as given, or for `imagenet` the cached copy
/// (downloaded first when absent, from the mirror when one is named).
pub fn locate(cfg: &BackboneConfig) -> anyhow::Result<PathBuf> {
    let Some(given) = cfg.pretrained.as_deref() else { user_bail!("{KEY}: not set") };
    if given != IMAGENET {
        return Ok(PathBuf::from(given));
    }
    let file = imagenet_file(cfg.kind)
        .ok_or_else(|| user_error!("{KEY}: {} has no published ImageNet weights", cfg.kind.name()))?;
    let mirror = fetch::mirror_from_env(MIRROR_ENV)?;
    download(&file, &cache_dir(), mirror.as_deref())
}

/// `file` in `cache` (downloaded when absent): the one-line error when no copy can be had.
pub fn download(file: &RemoteFile, cache: &Path, mirror: Option<&str>) -> anyhow::Result<PathBuf> {
    let created = fetch::create_dir_all(cache)?;
    let result = fetch::download_checked(&fetch::http::agent(), KEY, file, cache, mirror);
    let failures = match result {
        Ok(Ok(path)) => return Ok(path),
        Ok(Err(failures)) => failures,
        Err(e) => {
            remove_empty(&created);
            return Err(e);
        }
    };
    let tried: Vec<String> = failures.iter().map(|(url, f)| format!("{url} ({})", fetch::http::describe(f))).collect();
    let part = cache.join(format!("{}.part", file.name));
    if part.is_file() && std::fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
        user_bail!(
            "{KEY}: could not finish {}: {}; the part received is kept as {}: run again to resume",
            file.name,
            tried.join(", "),
            part.display()
        );
    }
    remove_empty(&created);
    user_bail!(
        "{KEY}: no cached copy of {} in {} ({CACHE_ENV}) and the download failed: {}; save the file there by \
         hand, or name a mirror with {MIRROR_ENV}",
        file.name,
        cache.display(),
        tried.join(", ")
    )
}

/// Directories a failed download made, innermost first, if nothing is in them.
fn remove_empty(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The tensors of a weights file by torchvision key: `.safetensors` or a `torch.save` zip,
/// after checking the SHA-256 prefix its name carries (torchvision's convention).
pub fn read(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        user_bail!("{KEY}: {}: no such file", path.display());
    }
    if let Some(want) = name_checksum(path) {
        let got = fetch::unpack::digest(path, &want).map_err(|e| user_error!("{KEY}: {}: {e}", path.display()))?;
        if got != want.hex() {
            user_bail!(
                "{KEY}: {}: sha256 starts {got}, but its name says {} (corrupt or not the published file)",
                path.display(),
                want.hex()
            );
        }
    }
    let is_safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let read = if is_safetensors { checkpoint::read_tensors(path) } else { checkpoint::pth::read(path) };
    read.map_err(|e| user_error!("{KEY}: {e}"))
}

/// Where each torchvision backbone of the model keeps its variables (`backbone`, or one per
/// column or expert: `columns.0`, `experts.1`, …).
fn backbone_prefixes(model: &MultiTaskModel) -> Vec<String> {
    let stem = ".stem.conv.weight";
    model.named_variables().into_iter().filter_map(|(n, _)| n.strip_suffix(stem).map(str::to_string)).collect()
}

/// A variable's name inside a backbone without its data group (`bn1.domains.1.running_mean` →
/// `bn1.running_mean`): every group's BatchNorm starts from the file's.
fn without_domain(rel: &str) -> String {
    let parts: Vec<&str> = rel.split('.').collect();
    match parts.iter().position(|&p| p == "domains") {
        Some(i) if i + 1 < parts.len() && parts[i + 1].bytes().all(|b| b.is_ascii_digit()) => {
            [&parts[..i], &parts[i + 2..]].concat().join(".")
        }
        _ => rel.to_string(),
    }
}

/// Loads the weights file `cfg` names into every torchvision backbone of `model`; returns the
/// file. Nothing is copied unless every key, shape and value fits.
pub fn load(model: &MultiTaskModel, cfg: &BackboneConfig) -> anyhow::Result<PathBuf> {
    let path = locate(cfg)?;
    let tensors = read(&path)?;
    assign(model, cfg, &tensors, &path)?;
    let what = if cfg.pretrained.as_deref() == Some(IMAGENET) { "torchvision's ImageNet" } else { "the" };
    tracing::info!("{KEY}: {} starts from {what} weights in {}", cfg.kind.name(), path.display());
    Ok(path)
}

/// Copies `tensors` (torchvision keys, read from `file`) into the model's backbones after
/// checking them all.
pub fn assign(
    model: &MultiTaskModel,
    cfg: &BackboneConfig,
    tensors: &[(String, Tensor)],
    file: &Path,
) -> anyhow::Result<()> {
    let at = || format!("{KEY}: {}", file.display());
    let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    match torchvision::identify(given.keys().copied()) {
        Some(kind) if kind != cfg.kind => {
            user_bail!("{}: holds {} weights, but model.backbone.kind is {}", at(), kind.name(), cfg.kind.name())
        }
        _ => {}
    }
    let variables = model.named_variables();
    let prefixes = backbone_prefixes(model);
    let mut targets: Vec<(&Tensor, String)> = Vec::new();
    for prefix in &prefixes {
        let under = format!("{prefix}.");
        for (name, var) in &variables {
            if let Some(rel) = name.strip_prefix(&under) {
                targets.push((var, torchvision::to_torchvision(&without_domain(rel))));
            }
        }
    }
    let wanted: BTreeSet<&str> = targets.iter().map(|(_, k)| k.as_str()).collect();
    let mut problems: Vec<String> =
        wanted.iter().filter(|k| !given.contains_key(*k)).map(|k| format!("missing '{k}'")).collect();
    let ignored: BTreeSet<&str> = torchvision::IGNORED_KEYS.iter().copied().collect();
    problems.extend(
        given.keys().filter(|k| !wanted.contains(*k) && !ignored.contains(*k)).map(|k| format!("unexpected '{k}'")),
    );
    for (var, key) in &targets {
        let Some(t) = given.get(key.as_str()) else { continue };
        if t.size() != var.size() {
            problems.push(format!("'{key}' has shape {:?}, expected {:?}", t.size(), var.size()));
        } else if t.is_floating_point() != var.is_floating_point() {
            problems.push(format!("'{key}' has dtype {:?}, expected {:?}", t.kind(), var.kind()));
        } else if t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0 {
            problems.push(format!("'{key}' holds NaN or Inf values"));
        }
    }
    problems.dedup();
    if !problems.is_empty() {
        let n = problems.len();
        let more = if n > 4 { format!("; and {} more", n - 4) } else { String::new() };
        user_bail!("{}: does not fit {}: {}{more}", at(), cfg.kind.name(), problems[..n.min(4)].join("; "));
    }
    tch::no_grad(|| {
        for (var, key) in &targets {
            let t = given[key.as_str()];
            var.shallow_clone().copy_(&t.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_their_checksum() {
        assert_eq!(
            name_checksum(Path::new("/x/resnet50-0676ba61.pth")),
            Some(Checksum::Sha256Prefix("0676ba61".into()))
        );
        assert_eq!(name_checksum(Path::new("my-weights.pth")), None);
        assert_eq!(name_checksum(Path::new("w-0676BA61.pth")), None);
        assert_eq!(
            imagenet_file(BackboneKind::Resnet101).unwrap().urls[0],
            "https://download.pytorch.org/models/resnet101-63fe2227.pth"
        );
        assert!(imagenet_file(BackboneKind::Resnet).is_none());
    }

    #[test]
    fn every_data_group_starts_from_the_files_batchnorm() {
        assert_eq!(without_domain("layer1.0.bn1.domains.1.running_mean"), "layer1.0.bn1.running_mean");
        assert_eq!(without_domain("stem.bn.domains.0.weight"), "stem.bn.weight");
        assert_eq!(without_domain("layer1.0.conv1.weight"), "layer1.0.conv1.weight");
    }
}

//! Per-variable optimizer settings from `optim.groups`: which variables train, and with what
//! learning-rate multiple and weight decay (PyTorch's parameter groups, chosen by name).
use crate::config::ParamGroup;

/// How one variable trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VarSetting {
    /// No gradient, no update, no change to its optimizer state.
    pub frozen: bool,
    /// Multiplies the scheduled learning rate.
    pub lr_scale: f64,
    pub weight_decay: f64,
}

impl VarSetting {
    /// A variable no group matches: it trains with the optimizer's own settings.
    pub fn plain(weight_decay: f64) -> Self {
        Self { frozen: false, lr_scale: 1.0, weight_decay }
    }

    pub const FROZEN: VarSetting = VarSetting { frozen: true, lr_scale: 0.0, weight_decay: 0.0 };
}

/// Whether `name` fits the glob `pattern`: `*` is any run of characters (dots included), `?`
/// one character, everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with one backtracking point (the last `*`).
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The first group of `groups` whose pattern fits `name`.
pub fn group_of<'a>(groups: &'a [ParamGroup], name: &str) -> Option<&'a ParamGroup> {
    groups.iter().find(|g| glob_match(&g.pattern, name))
}

/// The setting of each of `names` under `groups` (first match wins; none: the optimizer's
/// own, with `weight_decay`).
pub fn settings(groups: &[ParamGroup], names: &[String], weight_decay: f64) -> Vec<VarSetting> {
    names
        .iter()
        .map(|n| match group_of(groups, n) {
            None => VarSetting::plain(weight_decay),
            Some(g) if g.freeze => VarSetting::FROZEN,
            Some(g) => {
                VarSetting { frozen: false, lr_scale: g.lr_scale, weight_decay: g.weight_decay.unwrap_or(weight_decay) }
            }
        })
        .collect()
}

/// Refuses a group whose pattern matches none of `names` (a typo would otherwise train
/// everything silently): `at` is its key path, e.g. `optim.groups`.
pub fn check_patterns(groups: &[ParamGroup], names: &[String], at: &str) -> Result<(), String> {
    for (i, g) in groups.iter().enumerate() {
        if !names.iter().any(|n| glob_match(&g.pattern, n)) {
            let examples: Vec<&str> = example_names(names);
            return Err(format!(
                "{at}[{i}].match: '{}' matches no variable of this model (its names look like {})",
                g.pattern,
                examples.join(", ")
            ));
        }
    }
    Ok(())
}

/// A few names that show the model's naming: the first, and the first of each other top-level
/// part (backbone, heads.<task>, …).
fn example_names(names: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let prefix = |n: &str| n.split('.').take(2).collect::<Vec<_>>().join(".");
    for n in names {
        if out.len() < 3 && !out.iter().any(|o| prefix(o) == prefix(n)) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(pattern: &str, freeze: bool, lr_scale: f64) -> ParamGroup {
        ParamGroup { pattern: pattern.into(), freeze, lr_scale, weight_decay: None }
    }

    #[test]
    fn globs_cross_dots_and_match_whole_names() {
        assert!(glob_match("backbone.*", "backbone.stages.0.conv.weight"));
        assert!(glob_match("*.bn.*", "heads.seg.decoder.1.bn.weight"));
        assert!(glob_match("heads.?eg.*", "heads.seg.out.bias"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("backbone.*", "heads.seg.out.bias"));
        assert!(!glob_match("backbone", "backbone.stages.0.conv.weight"));
        assert!(!glob_match("a*b", "aXbY"));
        assert!(!glob_match("?", ""));
    }

    #[test]
    fn the_first_matching_group_wins() {
        let groups = vec![
            group("backbone.stages.0.*", true, 1.0),
            group("backbone.*", false, 0.1),
            ParamGroup { weight_decay: Some(0.5), ..group("heads.*.bias", false, 2.0) },
        ];
        let names: Vec<String> = [
            "backbone.stages.0.conv.weight",
            "backbone.stages.1.conv.weight",
            "heads.a.out.bias",
            "heads.a.out.weight",
        ]
        .map(String::from)
        .to_vec();
        let s = settings(&groups, &names, 0.01);
        assert_eq!(s[0], VarSetting::FROZEN);
        assert_eq!(s[1], VarSetting { frozen: false, lr_scale: 0.1, weight_decay: 0.01 });
        assert_eq!(s[2], VarSetting { frozen: false, lr_scale: 2.0, weight_decay: 0.5 });
        assert_eq!(s[3], VarSetting::plain(0.01));
        assert!(check_patterns(&groups, &names, "optim.groups").is_ok());
        let typo = vec![group("backbone.stem.*", true, 1.0)];
        let e = check_patterns(&typo, &names, "optim.groups").unwrap_err();
        assert!(e.starts_with("optim.groups[0].match: 'backbone.stem.*' matches no variable"), "{e}");
        assert!(e.contains("backbone.stages.0.conv.weight") && e.contains("heads.a.out.bias"), "{e}");
    }
}

//! `--set key.path=value`: the value is parsed as YAML and written at the key path, creating
//! missing mappings so defaults can be overridden; list items are addressed by index
//! (`tasks.1.weight=0.5`). Whether the key exists is checked by deserialisation afterwards.
use crate::{user_bail, user_error};
use serde_yaml::Value;

pub fn apply(root: &mut Value, assignment: &str) -> anyhow::Result<()> {
    let Some((path, raw)) = assignment.split_once('=') else {
        user_bail!("--set {assignment}: expected key.path=value");
    };
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        user_bail!("--set {assignment}: '{path}' is not a key path like optim.lr");
    }
    let value: Value =
        serde_yaml::from_str(raw).map_err(|e| user_error!("--set {assignment}: value is not valid YAML: {e}"))?;
    let mut node = root;
    for part in path.split('.') {
        node = match node {
            Value::Sequence(items) => {
                let len = items.len();
                let i: usize =
                    part.parse().map_err(|_| user_error!("--set {assignment}: '{part}' must be a list index"))?;
                items
                    .get_mut(i)
                    .ok_or_else(|| user_error!("--set {assignment}: index {i} is out of range (the list has {len})"))?
            }
            Value::Null => {
                *node = Value::Mapping(Default::default());
                child(node, part)
            }
            Value::Mapping(_) => child(node, part),
            _ => user_bail!("--set {assignment}: '{part}' is inside a value that is not a mapping"),
        };
    }
    *node = value;
    Ok(())
}

fn child<'a>(node: &'a mut Value, key: &str) -> &'a mut Value {
    let Value::Mapping(map) = node else { unreachable!("checked by the caller") };
    map.entry(Value::String(key.to_string())).or_insert(Value::Null)
}

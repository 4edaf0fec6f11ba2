//! Reading a variant's options map (`balance.options` for a method, `model.architecture` for an
//! architecture): typed getters with defaults and range checks, a record of every value read
//! (defaults included), and [`OptionMap::finish`] refusing any key no getter asked for, so a
//! typo or another variant's option is a user error naming `<section>.<key>`.
use serde_yaml::Value;
use std::collections::BTreeMap;

pub struct OptionMap<'a> {
    /// The key path of the map in errors: `balance.options`, `model.architecture`.
    section: &'static str,
    /// Whose options these are, in errors: `method 'nash'`, `architecture 'mmoe'`.
    owner: String,
    map: &'a BTreeMap<String, Value>,
    known: Vec<&'static str>,
    read: BTreeMap<String, Value>,
}

impl<'a> OptionMap<'a> {
    pub fn new(section: &'static str, owner: String, map: &'a BTreeMap<String, Value>) -> Self {
        Self { section, owner, map, known: Vec::new(), read: BTreeMap::new() }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key)
    }

    fn refuse(&self, key: &str, expected: &str, v: &Value) -> anyhow::Error {
        crate::user_error!("{}.{key}: expected {expected} for {}, got {}", self.section, self.owner, show(v))
    }

    fn record<T: Into<Value>>(&mut self, key: &'static str, v: T) {
        self.read.insert(key.to_string(), v.into());
    }

    /// A number with a default, which must satisfy `valid` (described by `expected`).
    pub fn f64(
        &mut self,
        key: &'static str,
        default: f64,
        expected: &str,
        valid: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let x = match self.get(key) {
            None => default,
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && valid(x) => x,
                _ => return Err(self.refuse(key, expected, v)),
            },
        };
        self.record(key, x);
        Ok(x)
    }

    /// A positive number with a default.
    pub fn positive(&mut self, key: &'static str, default: f64) -> anyhow::Result<f64> {
        self.f64(key, default, "a positive number", |x| x > 0.0)
    }

    /// A number ≥ 0 with a default.
    pub fn non_negative(&mut self, key: &'static str, default: f64) -> anyhow::Result<f64> {
        self.f64(key, default, "a number ≥ 0", |x| x >= 0.0)
    }

    /// A number in [0, 1) with a default.
    pub fn unit_interval(&mut self, key: &'static str, default: f64) -> anyhow::Result<f64> {
        self.f64(key, default, "a number in [0, 1)", |x| (0.0..1.0).contains(&x))
    }

    /// An integer in `range` with a default.
    pub fn int(
        &mut self,
        key: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> anyhow::Result<u64> {
        let x = match self.get(key) {
            None => default,
            Some(v) => match v.as_u64() {
                Some(x) if range.contains(&x) => x,
                _ => {
                    let expected = match (*range.start(), *range.end()) {
                        (1, u64::MAX) => "a positive integer".to_string(),
                        (lo, hi) => format!("an integer in {lo}..={hi}"),
                    };
                    return Err(self.refuse(key, &expected, v));
                }
            },
        };
        self.record(key, x);
        Ok(x)
    }

    /// A positive integer with a default.
    pub fn positive_int(&mut self, key: &'static str, default: u64) -> anyhow::Result<u64> {
        self.int(key, default, 1..=u64::MAX)
    }

    /// One of `allowed` (the first is the default).
    pub fn choice(&mut self, key: &'static str, allowed: &[&'static str]) -> anyhow::Result<&'static str> {
        let a = match self.get(key) {
            None => allowed[0],
            Some(v) => match v.as_str().and_then(|s| allowed.iter().find(|a| **a == s)) {
                Some(a) => a,
                None => return Err(self.refuse(key, &format!("one of {}", allowed.join(" | ")), v)),
            },
        };
        self.record(key, a);
        Ok(a)
    }

    /// The first key that no getter asked for, if any.
    pub fn unknown_key(&self) -> Option<&'a str> {
        self.map.keys().find(|k| !self.known.contains(&k.as_str())).map(String::as_str)
    }

    /// Fails on the first key that no getter asked for (`hint` may add to the message);
    /// returns every option's value, defaults included.
    pub fn finish(self, hint: impl Fn(&str) -> &'static str) -> anyhow::Result<BTreeMap<String, Value>> {
        if let Some(key) = self.unknown_key() {
            let accepted = if self.known.is_empty() { "none".to_string() } else { self.known.join(", ") };
            crate::user_bail!(
                "{}.{key}: not an option of {}{}; accepted: {accepted}",
                self.section,
                self.owner,
                hint(key)
            );
        }
        Ok(self.read)
    }
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v).map(|s| format!("'{}'", s.trim())).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    fn map(yaml: &str) -> BTreeMap<String, Value> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn records_defaults_and_values_and_refuses_unknown_keys() {
        let m = map("{experts: 4}");
        let mut o = OptionMap::new("model.architecture", "architecture 'mmoe'".into(), &m);
        assert_eq!(o.int("experts", 3, 1..=64).unwrap(), 4);
        assert_eq!(o.positive("gamma", 1.5).unwrap(), 1.5);
        let read = o.finish(|_| "").unwrap();
        assert_eq!(read, map("{experts: 4, gamma: 1.5}"));

        let m = map("{expert: 4}");
        let mut o = OptionMap::new("model.architecture", "architecture 'mmoe'".into(), &m);
        o.int("experts", 3, 1..=64).unwrap();
        let e = o.finish(|_| "").unwrap_err();
        assert!(is_user_error(&e), "{e}");
        assert_eq!(e.to_string(), "model.architecture.expert: not an option of architecture 'mmoe'; accepted: experts");
    }

    #[test]
    fn out_of_range_integers_name_the_range() {
        let m = map("{k: 9, experts: 0}");
        let mut o = OptionMap::new("model.architecture", "architecture 'dselect_k'".into(), &m);
        let e = o.int("k", 2, 1..=8).unwrap_err();
        assert!(e.to_string().starts_with("model.architecture.k: expected an integer in 1..=8"), "{e}");
        let e = o.positive_int("experts", 3).unwrap_err();
        assert!(e.to_string().contains("a positive integer") && e.to_string().contains("'0'"), "{e}");
    }
}

//! Reading `balance.options` for one method: typed getters with defaults and range checks,
//! and [`Options::finish`] rejecting any key the method did not ask for, so a typo or an
//! option of another method is a user error naming `balance.options.<key>`. It also checks
//! that `balance.on: representation` is only given to a gradient method.
use super::{Balancer, GradientBalancer, GradientMethod, GradientSpace};
use crate::config::{BalanceConfig, GradientOn};
use serde_yaml::Value;
use std::collections::BTreeMap;

pub struct Options<'a> {
    method: &'a str,
    map: &'a BTreeMap<String, Value>,
    on: GradientOn,
    on_used: bool,
    known: Vec<&'static str>,
}

impl<'a> Options<'a> {
    pub fn new(cfg: &'a BalanceConfig) -> Self {
        Self { method: &cfg.method, map: &cfg.options, on: cfg.on, on_used: false, known: Vec::new() }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key)
    }

    /// A number with a default, which must satisfy `valid` (described by `expected`).
    pub fn f64(
        &mut self,
        key: &'static str,
        default: f64,
        expected: &str,
        valid: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && valid(x) => Ok(x),
            _ => crate::user_bail!(
                "balance.options.{key}: expected {expected} for method '{}', got {}",
                self.method,
                show(v)
            ),
        }
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

    /// A gradient method run in the space `balance.on` names.
    pub fn gradient_method<M: GradientMethod + 'static>(&mut self, method: M) -> anyhow::Result<Box<dyn Balancer>> {
        Ok(Box::new(GradientBalancer::new(method, self.space())))
    }

    /// A positive integer with a default.
    pub fn positive_int(&mut self, key: &'static str, default: u64) -> anyhow::Result<u64> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.as_u64() {
            Some(x) if x > 0 => Ok(x),
            _ => crate::user_bail!(
                "balance.options.{key}: expected a positive integer for method '{}', got {}",
                self.method,
                show(v)
            ),
        }
    }

    /// One of `allowed` (the first is the default).
    pub fn choice(&mut self, key: &'static str, allowed: &[&'static str]) -> anyhow::Result<&'static str> {
        let Some(v) = self.get(key) else {
            return Ok(allowed[0]);
        };
        match v.as_str().and_then(|s| allowed.iter().find(|a| **a == s)) {
            Some(a) => Ok(a),
            None => crate::user_bail!(
                "balance.options.{key}: expected one of {} for method '{}', got {}",
                allowed.join(" | "),
                self.method,
                show(v)
            ),
        }
    }

    /// `balance.on`: where a gradient method takes the per-task gradients.
    pub fn space(&mut self) -> GradientSpace {
        self.on_used = true;
        match self.on {
            GradientOn::Params => GradientSpace::Params,
            GradientOn::Representation => GradientSpace::Representation,
        }
    }

    /// Fails on the first key that no getter asked for, and on `balance.on: representation`
    /// for a method that works on the losses alone.
    pub fn finish(self) -> anyhow::Result<()> {
        if let Some(key) = self.map.keys().find(|k| !self.known.contains(&k.as_str())) {
            let accepted = if self.known.is_empty() { "none".to_string() } else { self.known.join(", ") };
            let hint = if key == "on" { " (`on` is `balance.on`, not an option)" } else { "" };
            crate::user_bail!(
                "balance.options.{key}: not an option of method '{}'{hint}; accepted: {accepted}",
                self.method
            );
        }
        if !self.on_used && self.on == GradientOn::Representation {
            crate::user_bail!(
                "balance.on: method '{}' works on the losses alone; 'representation' applies to gradient methods only",
                self.method
            );
        }
        Ok(())
    }
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v).map(|s| format!("'{}'", s.trim())).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    fn cfg(method: &str, yaml: &str) -> BalanceConfig {
        BalanceConfig { method: method.into(), on: GradientOn::Params, options: serde_yaml::from_str(yaml).unwrap() }
    }

    #[test]
    fn reads_defaults_values_and_rejects_unknown() {
        let mut c = cfg("cagrad", "{alpha: 0.25}");
        c.on = GradientOn::Representation;
        let mut o = Options::new(&c);
        assert_eq!(o.f64("alpha", 0.5, "a number ≥ 0", |x| x >= 0.0).unwrap(), 0.25);
        assert_eq!(o.space(), GradientSpace::Representation);
        assert_eq!(o.f64("other", 7.0, "x", |_| true).unwrap(), 7.0);
        o.finish().unwrap();

        // `on: representation` for a loss-level method (which never asks for the space).
        let mut ew = cfg("ew", "{}");
        ew.on = GradientOn::Representation;
        let e = Options::new(&ew).finish().unwrap_err();
        assert!(is_user_error(&e) && e.to_string().starts_with("balance.on:"), "{e}");

        let c = cfg("dwa", "{temperature: 2, tempreature: 3}");
        let mut o = Options::new(&c);
        assert_eq!(o.f64("temperature", 2.0, "x", |x| x > 0.0).unwrap(), 2.0);
        let err = o.finish().unwrap_err();
        assert!(is_user_error(&err));
        assert!(err.to_string().starts_with("balance.options.tempreature:"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = cfg("nash", "{update_every: 0, norm: l3, alpha: fast}");
        let mut o = Options::new(&c);
        let e = o.positive_int("update_every", 1).unwrap_err();
        assert!(e.to_string().starts_with("balance.options.update_every:"), "{e}");
        let e = o.choice("norm", &["l1", "l2"]).unwrap_err();
        assert!(e.to_string().contains("l1 | l2"), "{e}");
        let e = o.f64("alpha", 0.5, "a number", |_| true).unwrap_err();
        assert!(is_user_error(&e) && e.to_string().contains("'fast'"), "{e}");
    }
}

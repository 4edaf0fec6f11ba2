//! Reading `balance.options` for one method: the typed getters of [`OptionMap`] (defaults,
//! range checks, unknown keys refused with `balance.options.<key>`), plus `balance.on`: it is
//! only accepted by a gradient method.
use super::{Balancer, GradientBalancer, GradientMethod, GradientSpace};
use crate::config::{BalanceConfig, GradientOn, OptionMap};
use serde_yaml::Value;
use std::collections::BTreeMap;

pub struct Options<'a> {
    map: OptionMap<'a>,
    method: &'a str,
    on: GradientOn,
    on_used: bool,
}

impl<'a> std::ops::Deref for Options<'a> {
    type Target = OptionMap<'a>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Options<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl<'a> Options<'a> {
    pub fn new(cfg: &'a BalanceConfig) -> Self {
        Self {
            map: OptionMap::new("balance.options", format!("method '{}'", cfg.method), &cfg.options),
            method: &cfg.method,
            on: cfg.on,
            on_used: false,
        }
    }

    /// A gradient method run in the space `balance.on` names.
    pub fn gradient_method<M: GradientMethod + 'static>(&mut self, method: M) -> anyhow::Result<Box<dyn Balancer>> {
        Ok(Box::new(GradientBalancer::new(method, self.space())))
    }

    /// `balance.on`: where a gradient method takes the per-task gradients.
    pub fn space(&mut self) -> GradientSpace {
        self.on_used = true;
        match self.on {
            GradientOn::Params => GradientSpace::Params,
            GradientOn::Representation => GradientSpace::Representation,
        }
    }

    /// Whether the method asked for `balance.on` (only gradient methods do).
    pub fn reads_space(&self) -> bool {
        self.on_used
    }

    /// Fails on the first key that no getter asked for, and on `balance.on: representation`
    /// for a method that works on the losses alone.
    /// Returns every option's value, defaults included.
    pub fn finish(self) -> anyhow::Result<BTreeMap<String, Value>> {
        let hint = |key: &str| if key == "on" { " (`on` is `balance.on`, not an option)" } else { "" };
        let values = self.map.finish(hint)?;
        if !self.on_used && self.on == GradientOn::Representation {
            crate::user_bail!(
                "balance.on: method '{}' works on the losses alone; 'representation' applies to gradient methods only",
                self.method
            );
        }
        Ok(values)
    }
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

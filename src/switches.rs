//! Speed features that can be switched off from the environment, for A/B timing in
//! `scripts/bench.sh` (docs/BENCHMARKS.md): each is on unless its variable is `0`, `false` or
//! `off`. They change speed only, never results beyond floating-point rounding.

/// `MTL_CHANNELS_LAST`: channels-last training forwards.
pub const CHANNELS_LAST: &str = "MTL_CHANNELS_LAST";
/// `MTL_FUSED_OPTIM`: the single-pass CPU optimizer instead of tensor ops.
pub const FUSED_OPTIM: &str = "MTL_FUSED_OPTIM";

/// Whether the switch `name` is on in this process's environment.
pub fn on(name: &str) -> bool {
    !matches!(std::env::var(name).as_deref(), Ok("0") | Ok("false") | Ok("off"))
}

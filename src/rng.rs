//! Every random decision comes from a ChaCha stream that is a pure function of
//! (run seed, purpose, index). Nothing random carries hidden state from one step to the next,
//! so a resumed run reproduces the uninterrupted one exactly: the checkpoint only has to know
//! the step and epoch (docs/DECISIONS.md, "Randomness: derived, not stored").
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is used for; each purpose gets independent numbers for the same index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Synthetic data: index = sample index (train and val use different split ids).
    SyntheticTrain = 1,
    SyntheticVal = 2,
    /// Data order: index = epoch.
    Shuffle = 3,
    /// Augmentation: index = global step.
    Augment = 4,
    /// libtorch's generator (dropout): index = global step.
    Torch = 5,
    /// Balancing methods that draw random numbers (RLW, PCGrad's order): index = global step.
    Balance = 6,
    /// Model initialisation: index 0.
    Init = 7,
    /// Dataset construction (CIFAR pasting partners): index = sample index.
    DataBuild = 8,
    /// Architectures that draw random numbers while training (LTB's Gumbel noise): index =
    /// global step.
    Architecture = 9,
    /// A task's own data (multi-input MTL): its generation, order and augmentation derive from
    /// this seed; index = [`name_index`] of the first task reading it (by name, so the task's
    /// single-task baseline draws the same data).
    DataGroup = 10,
    /// A streamed table's chunk order: index = epoch.
    TableChunks = 11,
    /// A streamed table's row order within a window: seeded from (seed, this, epoch), index =
    /// window.
    TableRows = 12,
}

/// SplitMix64 finaliser: spreads nearby inputs over the whole 64-bit range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit seed for (seed, purpose, index).
pub fn derive_seed(seed: u64, purpose: Purpose, index: u64) -> u64 {
    mix(mix(mix(seed) ^ purpose as u64) ^ index)
}

/// A stream index for a name (FNV-1a of its bytes).
pub fn name_index(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A fresh generator for (seed, purpose, index).
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, purpose, index))
}

/// Reseeds libtorch's global generators (CPU and CUDA) for this step, so dropout masks
/// depend only on (seed, step).
pub fn seed_torch(seed: u64, step: u64) {
    // libtorch takes an i64; keep it positive.
    let s = (derive_seed(seed, Purpose::Torch, step) >> 1) as i64;
    tch::manual_seed(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: u64 = stream(7, Purpose::Augment, 3).gen();
        let b: u64 = stream(7, Purpose::Augment, 3).gen();
        let c: u64 = stream(7, Purpose::Augment, 4).gen();
        let d: u64 = stream(7, Purpose::Shuffle, 3).gen();
        let e: u64 = stream(8, Purpose::Augment, 3).gen();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
    }
}

//! mtl: a multi-task learning training engine on libtorch.
//!
//! The library is the engine; the `mtl-train` binary's commands live in `src/cli/` on top of
//! it. Layers, from the bottom (docs/ARCHITECTURE.md): the base ([`error`], [`files`],
//! [`rng`], [`transfer`]); the config ([`config`], a leaf); the engine's parts ([`data`], [`model`],
//! [`tasks`], [`balance`], [`optim`], [`checkpoint`]); the resolve step ([`setup`]); the
//! training loop ([`train`]).
pub mod balance;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod files;
pub mod model;
pub mod optim;
pub mod rng;
pub mod setup;
pub mod tasks;
pub mod train;
pub mod transfer;

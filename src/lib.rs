//! mtl: a multi-task learning training engine on libtorch.
//!
//! Everything the `mtl-train` binary does is usable from here: configs ([`config`]), data
//! ([`data`]), models ([`model`]), task losses and metrics ([`tasks`]), balancing methods
//! ([`balance`]), optimizers ([`optim`]), the training loop ([`train`]) and checkpoints
//! ([`checkpoint`]).
pub mod balance;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod error;
pub mod infer;
pub mod model;
pub mod optim;
pub mod rng;
pub mod safetensors_check;
pub mod switches;
pub mod tasks;
pub mod train;
pub mod transfer;

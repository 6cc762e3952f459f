//! gla-model: the language models of the GLA family as fla builds them (`GLAForCausalLM`,
//! `DeltaNetForCausalLM`, `GatedDeltaNetForCausalLM`, one token mixer per layer: [`mixers`]) on
//! the CPU in f32, with an explicit forward and backward (llm.c style, no tape), AdamW, the MQAR
//! recall task and checkpoints in fla's Hugging Face format.
//!
//! Reading order: [`config`] (fla's configs, [`ModelConfig`] by `model_type`) -> [`params`] (one table of name, shape, init)
//! -> [`ops`] (each layer op's forward and backward) -> [`backend`] (the ops as a trait; [`cpu`]
//! implements it with [`ops`], gla-cuda's `Gpu` on a GPU) -> [`model`] (forward, backward, written once
//! over the trait) ->
//! [`optim`] (AdamW, clipping, schedule) -> [`data`] (MQAR) / [`text`] (a tokenised text corpus)
//! -> [`checkpoint`] -> [`train`].
//!
//! With the `cuda` feature, `gpu` holds the model on NVIDIA GPUs: the training device of the
//! one engine ([`engine::DeviceEngine`]) and the decoder ([`generate::Decoder`]), both this
//! crate's forward and backward run on gla-cuda's backend, with gla-cuda's device services
//! (device weights, fused AdamW, NCCL, decode state table and CUDA graphs) around them.
#![deny(missing_docs)]

pub use gla_core::backend;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod engine;
mod error;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod infer;
pub mod layout;
pub mod limits;
pub mod mixers;
pub mod model;
pub mod modules;
pub mod ops;
pub mod optim;
pub mod params;
pub mod rng;
pub mod sample;
pub mod shards;
pub mod state;
pub mod text;
pub mod tokenizer;
pub mod train;
pub mod vig;

pub use backend::{Backend, GlaOps, Primitives};
pub use config::{DeltaNetConfig, Dims, FeatureMap, GatedDeltaNetConfig, GlaConfig, ModelConfig};
pub use cpu::Cpu;
pub use data::Mqar;
pub use engine::{CpuDevice, DeviceEngine, Engine, TrainDevice};
pub use error::{Error, Result};
pub use layout::Layout;
pub use model::{shift_labels, Activations, Acts, GlaModel, LossOut, IGNORE_INDEX};
pub use rng::Rng;
pub use text::{CorpusTokenizer, TextData, TextError, TextTask};
pub use train::{EvalStats, Shard, StepStats, TrainConfig, Trainer};

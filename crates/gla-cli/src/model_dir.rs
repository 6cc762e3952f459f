//! `--model DIR` of `gla generate`, `gla eval` and `gla bench generate`: a Hugging Face model
//! directory (config.json + model.safetensors, or sharded), or a `gla train` run directory,
//! which stands for its newest complete checkpoint (the one its `latest` file names).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gla_model::checkpoint::{latest_checkpoint, CONFIG_FILE, LATEST_FILE, STATE_FILE};
use gla_model::shards::load_model_dir;
use gla_model::tokenizer::{Tokenizer, TOKENIZER_FILE};
use gla_model::GlaModel;

/// The model directory `path` stands for: itself, or for a run directory (a `latest` file and
/// no config.json) its newest checkpoint.
///
/// # Errors
/// A run directory whose `latest` names no complete checkpoint.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.join(CONFIG_FILE).is_file() && path.join(LATEST_FILE).is_file() {
        return latest_checkpoint(path).with_context(|| format!("{} is a training run: finding its newest checkpoint", path.display()));
    }
    Ok(path.to_path_buf())
}

/// Loads the model `path` stands for ([`resolve`]); returns it with the directory it came from.
///
/// # Errors
/// As [`resolve`]; load errors naming the file and tensor.
pub fn load(path: &Path) -> Result<(GlaModel, PathBuf)> {
    let dir = resolve(path)?;
    let model = load_model_dir(&dir).with_context(|| format!("loading the model from {}", dir.display()))?;
    Ok((model, dir))
}

/// The tokenizer.json that goes with a model directory: its own, or for a checkpoint of a text
/// run trained with `--tokenizer`, the file its training state names. None: byte-level.
pub fn tokenizer_file(dir: &Path) -> Option<PathBuf> {
    let own = dir.join(TOKENIZER_FILE);
    if own.is_file() {
        return Some(own);
    }
    // a checkpoint's trainer_state.json holds the run's settings, `train.text.tokenizer` among them
    let state: serde_json::Value = serde_json::from_str(&gla_model::limits::read_text(&dir.join(STATE_FILE)).ok()?).ok()?;
    state.pointer("/train/text/tokenizer")?.as_str().map(PathBuf::from)
}

/// The tokenizer of a model directory ([`tokenizer_file`]), or byte-level with `bytes`.
///
/// # Errors
/// A tokenizer.json that does not load (or a gla built without `--features hf-tokenizer`).
pub fn tokenizer(dir: &Path, bytes: bool) -> Result<Tokenizer> {
    match tokenizer_file(dir) {
        Some(f) if !bytes => Tokenizer::from_file(&f).with_context(|| format!("loading the tokenizer {}", f.display())),
        _ => Ok(Tokenizer::Bytes),
    }
}

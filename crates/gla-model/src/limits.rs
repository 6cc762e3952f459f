//! Size limits for everything whose size comes from a file or a flag.
//!
//! Contract: no buffer sized by a config, a header or a flag is allocated before its size has
//! been computed with checked arithmetic and compared with what the machine has
//! ([`memory_budget`]); a size that overflows or does not fit is [`Error::TooLarge`] naming what
//! it was for, never a panic or an allocation abort. The estimates here are lower bounds of what
//! the allocation will take, so a run that fits is never refused.

use std::path::Path;
use std::sync::OnceLock;

use crate::config::{Dims, MixerDims};
use crate::{Error, Result};

/// The largest single dimension of a config or a flag (hidden size, heads, MLP width, vocabulary,
/// conv width, layers, sequence length, batch): the kernels index one dimension with 32-bit
/// integers.
pub const MAX_DIM: usize = i32::MAX as usize;

/// The largest file read whole into memory as text or JSON (`config.json`, an index, a settings
/// file, `tokenizer.json`, `trainer_state.json`).
pub const MAX_TEXT_FILE: u64 = 256 << 20;

/// Bytes of the parameter table's bookkeeping per tensor (its name, shape and offset), counted
/// with the weights so that a config with millions of layers is refused before its table is built.
const SPEC_BYTES: u64 = 160;
/// Tensors per layer in the table (an upper bound of the GLA block's rows).
const SPECS_PER_LAYER: u64 = 20;

/// The memory this process may use, in bytes: `GLA_MEMORY_BUDGET` (bytes) when set, else the
/// smaller of the machine's RAM plus swap (`/proc/meminfo`) and the cgroup limit; `u64::MAX`
/// where neither can be read. Read once.
pub fn memory_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        if let Some(b) = std::env::var("GLA_MEMORY_BUDGET").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            return b;
        }
        let mem = meminfo().unwrap_or(u64::MAX);
        let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
        cgroup.map_or(mem, |c| c.min(mem))
    })
}

/// MemTotal + SwapTotal of `/proc/meminfo`, in bytes.
fn meminfo() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some(kb("MemTotal:")?.saturating_add(kb("SwapTotal:").unwrap_or(0)).saturating_mul(1024))
}

/// Refuses `bytes` (`None`: the computation overflowed) above [`memory_budget`].
///
/// # Errors
/// [`Error::TooLarge`] naming `what`.
pub fn check_budget(what: impl Into<String>, bytes: Option<u64>) -> Result<u64> {
    let limit = memory_budget();
    match bytes {
        Some(b) if b <= limit => Ok(b),
        need => Err(Error::TooLarge { what: what.into(), need, limit }),
    }
}

fn mul(xs: &[usize]) -> Option<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x as u64))
}

fn sum(xs: &[Option<u64>]) -> Option<u64> {
    xs.iter().try_fold(0u64, |acc, x| acc.checked_add((*x)?))
}

/// The parameter count of the causal LM of `d` (the arena length of `Layout::new(d)`), with
/// checked arithmetic; `None` when it overflows u64. A test holds it equal to the table's.
pub fn param_count(d: &Dims) -> Option<u64> {
    d.mixers.iter().try_fold(lm_params(d)?, |acc, m| acc.checked_add(layer_params(d, m)?))
}

/// [`param_count`] of a model whose `d.layers` layers all have the mixer `m` (before its
/// per-layer list is built).
pub(crate) fn uniform_param_count(d: &Dims, m: &MixerDims) -> Option<u64> {
    lm_params(d)?.checked_add(layer_params(d, m)?.checked_mul(d.layers as u64)?)
}

/// The embedding, the final norm and the lm_head.
fn lm_params(d: &Dims) -> Option<u64> {
    let head = if d.tied { Some(0) } else { mul(&[d.vocab, d.d]) };
    sum(&[mul(&[d.vocab, d.d]), Some(d.d as u64), head])
}

/// One block: its two norms, its mixer (the rows of its table, `mixers::*::table`) and the MLP.
fn layer_params(d: &Dims, m: &MixerDims) -> Option<u64> {
    let mixer = match m {
        MixerDims::Gla(g) => {
            let conv = |c: usize| if g.conv > 0 { mul(&[c, g.conv]) } else { Some(0) };
            let gate = if g.output_gate { mul(&[g.value_dim, d.d]) } else { Some(0) };
            sum(&[
                mul(&[g.key_dim, d.d]),
                mul(&[g.key_dim_kv, d.d]),
                mul(&[g.value_dim_kv, d.d]),
                conv(g.key_dim),
                conv(g.key_dim_kv),
                conv(g.value_dim_kv),
                gate,
                mul(&[g.gate_rank, d.d]),
                mul(&[g.key_dim_kv, g.gate_rank]),
                Some(g.key_dim_kv as u64),
                mul(&[d.d, g.value_dim]),
                Some(g.head_v as u64),
            ])?
        }
        MixerDims::Delta(m) => {
            let conv = |c: usize| if m.conv > 0 { mul(&[c, m.conv]) } else { Some(0) };
            let gate = if m.output_gate.is_some() { mul(&[m.value_dim, d.d]) } else { Some(0) };
            let beta = if m.use_beta { mul(&[m.v_heads, d.d]) } else { Some(0) };
            // a_proj [HV, D], A_log [HV], dt_bias [HV]
            let decay = if m.decay { sum(&[mul(&[m.v_heads, d.d]), mul(&[2, m.v_heads])]) } else { Some(0) };
            sum(&[
                mul(&[2, m.key_dim, d.d]),
                mul(&[m.value_dim, d.d]),
                beta,
                decay,
                conv(m.key_dim),
                conv(m.key_dim),
                conv(m.value_dim),
                gate,
                Some(m.head_v as u64),
                mul(&[d.d, m.value_dim]),
            ])?
        }
        MixerDims::Attn(a) => {
            // q_proj, k_proj, v_proj (+ biases), o_proj
            let bias = if a.qkv_bias { sum(&[Some(a.q_dim() as u64), mul(&[2, a.kv_dim()])]) } else { Some(0) };
            sum(&[mul(&[2, a.q_dim(), d.d]), mul(&[2, a.kv_dim(), d.d]), bias])?
        }
    };
    sum(&[mul(&[2, d.d]), Some(mixer), mul(&[3, d.intermediate, d.d])])
}

/// Bytes a model of `d` takes in memory: its f32 weights and its parameter table.
pub fn model_bytes(d: &Dims) -> Option<u64> {
    param_count(d)?.checked_mul(4)?.checked_add((d.layers as u64).checked_mul(SPECS_PER_LAYER * SPEC_BYTES)?)
}

/// Checks that a model of `d` fits in memory `copies` times over (1: inference; 4: training's
/// weights, gradients and two AdamW moments).
///
/// # Errors
/// [`Error::TooLarge`].
pub fn check_model(d: &Dims, copies: u64) -> Result<u64> {
    let what = format!(
        "a model of hidden_size {} x num_hidden_layers {} (intermediate_size {}, vocab_size {}; {} parameters){}",
        d.d,
        d.layers,
        d.intermediate,
        d.vocab,
        param_count(d).map_or_else(|| "more than 2^64".to_string(), |p| p.to_string()),
        if copies > 1 { " with its gradients and optimizer state" } else { "" }
    );
    check_budget(what, model_bytes(d).and_then(|b| b.checked_mul(copies)))
}

/// A lower bound of the bytes of the training activations of a `[b, t]` batch: per layer and
/// token, the saved inputs of both norms and of the mixer's projections, and the MLP's three
/// `intermediate`-wide rows, in f32.
pub fn train_activation_bytes(d: &Dims, b: usize, t: usize) -> Option<u64> {
    let per_token = d.mixers.iter().try_fold(0u64, |acc, m| {
        let (kd, vd) = match m {
            MixerDims::Gla(g) => (g.key_dim, g.value_dim),
            MixerDims::Delta(m) => (m.key_dim, m.value_dim),
            MixerDims::Attn(a) => (a.q_dim() + a.kv_dim(), a.kv_dim()),
        };
        acc.checked_add(sum(&[mul(&[3, d.d]), Some(kd as u64), Some(vd as u64), mul(&[3, d.intermediate])])?)
    })?;
    mul(&[b, t])?.checked_mul(per_token)?.checked_mul(4)
}

/// Checks a training run of `d` on `[b, t]` batches: each flag within [`MAX_DIM`], then the
/// model four times over (weights, gradients, moments) plus the activations within the budget.
///
/// # Errors
/// [`Error::BadArg`] for a batch or length over [`MAX_DIM`]; [`Error::TooLarge`].
pub fn check_training(d: &Dims, b: usize, t: usize) -> Result<u64> {
    for (key, v) in [("batch_size", b), ("seq_len", t)] {
        if v > MAX_DIM {
            return Err(Error::BadArg { key, reason: format!("{v} is above the limit of {MAX_DIM}") });
        }
    }
    let model = model_bytes(d).and_then(|m| m.checked_mul(4));
    let acts = train_activation_bytes(d, b, t);
    let what = format!(
        "training a model of hidden_size {} x num_hidden_layers {} ({} parameters) on batches of {b} x {t} tokens",
        d.d,
        d.layers,
        param_count(d).map_or_else(|| "more than 2^64".to_string(), |p| p.to_string())
    );
    check_budget(what, model.and_then(|m| m.checked_add(acts?)))
}

/// Opens `path` for reading only if it is a regular file (a FIFO, a device or a socket would
/// block or never end) of at most `max` bytes; returns it with its length.
///
/// # Errors
/// [`Error::Io`] when it cannot be opened or is not a regular file; [`Error::TooLarge`] when it
/// is longer than `max`.
pub fn open_regular(path: &Path, max: u64) -> Result<(std::fs::File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("read", path, e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, device or socket)" };
        return Err(Error::io("read", path, std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{kind}: refused"))));
    }
    let len = meta.len();
    if len > max {
        return Err(Error::TooLarge { what: format!("reading {} ({len} bytes)", path.display()), need: Some(len), limit: max });
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    Ok((f, len))
}

/// Reads a whole regular file of at most `max` bytes ([`open_regular`]).
///
/// # Errors
/// As [`open_regular`], and read errors.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let (f, len) = open_regular(path, max)?;
    let mut out = Vec::with_capacity(len as usize);
    // `take`: a file that grows while read stays within the limit
    f.take(max).read_to_end(&mut out).map_err(|e| Error::io("read", path, e))?;
    Ok(out)
}

/// [`read_regular`] as UTF-8 text of at most [`MAX_TEXT_FILE`] bytes.
///
/// # Errors
/// As [`read_regular`]; [`Error::Io`] (invalid data) for text that is not UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_regular(path, MAX_TEXT_FILE)?;
    String::from_utf8(bytes)
        .map_err(|e| Error::io("read", path, std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}"))))
}

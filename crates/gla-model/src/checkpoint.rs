//! Checkpoints in fla's Hugging Face format plus the training state beside them.
//!
//! A model directory holds `config.json` (fla's `GLAConfig`) and `model.safetensors` (fla's
//! parameter names, f32; `lm_head.weight` absent when tied), so fla's
//! `AutoModelForCausalLM.from_pretrained(dir)` loads it and [`load_model`] loads fla's. A training
//! checkpoint adds `optimizer.safetensors` (AdamW `exp_avg.<name>` / `exp_avg_sq.<name>`) and
//! `trainer_state.json` (step, data cursor, RNG state, settings, loss history).
//!
//! Every file is written atomically (temp file, fsync, rename). A run directory holds
//! `checkpoint-<step>/` directories, each written complete under a temporary name and renamed,
//! and a `latest` file naming the newest complete one (also replaced atomically), so a kill at
//! any instant leaves the previous checkpoint intact and `latest` pointing at a complete one.

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::config::ModelConfig;
use crate::layout::Layout;
use crate::model::GlaModel;
use crate::{Error, Result};

/// File names inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// AdamW moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Step, cursor, RNG, settings, history.
pub const STATE_FILE: &str = "trainer_state.json";
/// In a run directory: the name of the newest complete checkpoint directory.
pub const LATEST_FILE: &str = "latest";

/// The dtype of every weight file this crate writes ([`save_model`],
/// [`crate::shards::save_sharded`]): f32, whatever dtype the model was loaded from (bf16 and f16
/// checkpoints are widened on load).
pub const WEIGHTS_DTYPE: Dtype = Dtype::F32;

pub use crate::config::WEIGHTS_TORCH_DTYPE;

/// Writes `bytes` to `path` atomically ([`gla_core::io::write_atomic`]: a temp file in the same
/// directory, fsync, rename, directory sync).
///
/// # Errors
/// [`Error::Io`] naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    gla_core::io::write_atomic(path, bytes).map_err(|e| Error::io("write", path, e))
}

fn sync_dir(dir: Option<&Path>) {
    // best effort: makes the rename durable on POSIX; not supported everywhere
    if let Some(d) = dir {
        let d = if d.as_os_str().is_empty() { Path::new(".") } else { d };
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises named f32 tensors (table order, shapes from the table) to safetensors bytes.
fn to_safetensors(layout: &Layout, data: &[f32], prefix: &str, format_pt: bool) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        layout.specs.iter().map(|s| (format!("{prefix}{}", s.name), s.shape.clone(), f32_bytes(&data[s.range()]))).collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(WEIGHTS_DTYPE, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors { path: n.clone(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    // Hugging Face's loader checks `format` in the header metadata
    let metadata = format_pt.then(|| [("format".to_string(), "pt".to_string())].into_iter().collect());
    safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors { path: prefix.into(), reason: e.to_string() })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: value = m * 2^-24
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads the tensors of `layout` (with a name prefix) from safetensors bytes into an arena,
/// checking names, shapes and dtypes (f32, bf16 and f16 are accepted and widened to f32).
/// Checks a stored tensor's shape against the parameter table and decodes it (F32, BF16 or F16,
/// little-endian) into `dst`.
///
/// # Errors
/// [`Error::Tensor`] naming the tensor, with the expected shape.
pub(crate) fn decode_tensor(dst: &mut [f32], t: &TensorView<'_>, path: &str, name: &str, shape: &[usize]) -> Result<()> {
    let err = |reason: String| Error::Tensor { path: path.to_string(), name: name.to_string(), reason };
    if t.shape() != shape {
        return Err(err(format!("expected shape {shape:?}, found {:?}", t.shape())));
    }
    let data = t.data();
    match t.dtype() {
        Dtype::F32 => dst.iter_mut().zip(data.chunks_exact(4)).for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::BF16 => {
            dst.iter_mut().zip(data.chunks_exact(2)).for_each(|(d, b)| *d = gla_core::bf16::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
        }
        Dtype::F16 => dst.iter_mut().zip(data.chunks_exact(2)).for_each(|(d, b)| *d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        other => return Err(err(format!("dtype {other:?} is not supported (F32, BF16 or F16, shape {shape:?})"))),
    }
    // one pass over what was just written: NaN or Inf in a weight only ever produces garbage
    if let Some(i) = dst.iter().position(|v| !v.is_finite()) {
        return Err(err(format!("holds a non-finite value ({}) at element {i} of shape {shape:?}: the weights are corrupt", dst[i])));
    }
    Ok(())
}

/// Reads every tensor of `layout` (names with `prefix`) from a parsed file into one arena.
/// `f32_only`: refuse other dtypes (optimizer moments are always written as F32).
fn read_layout(st: &SafeTensors<'_>, p: &str, layout: &Layout, prefix: &str, f32_only: bool) -> Result<Vec<f32>> {
    // every name and shape is compared with the header before the arena is allocated
    for s in &layout.specs {
        let name = format!("{prefix}{}", s.name);
        match st.tensor(&name) {
            Ok(t) if t.shape() == s.shape.as_slice() => {}
            Ok(t) => {
                return Err(Error::Tensor {
                    path: p.to_string(),
                    name,
                    reason: format!("expected shape {:?}, found {:?}", s.shape, t.shape()),
                })
            }
            Err(_) => return Err(Error::Tensor { path: p.to_string(), name, reason: format!("missing (expected shape {:?})", s.shape) }),
        }
    }
    let mut out = vec![0.0f32; layout.numel];
    for s in &layout.specs {
        let name = format!("{prefix}{}", s.name);
        let t = st.tensor(&name).map_err(|_| Error::Tensor {
            path: p.to_string(),
            name: name.clone(),
            reason: format!("missing (expected shape {:?})", s.shape),
        })?;
        if f32_only && (t.shape() != s.shape.as_slice() || t.dtype() != Dtype::F32) {
            return Err(Error::Tensor {
                path: p.to_string(),
                name,
                reason: format!("expected F32 {:?}, found {:?} {:?}", s.shape, t.dtype(), t.shape()),
            });
        }
        decode_tensor(&mut out[s.range()], &t, p, &name, &s.shape)?;
    }
    Ok(out)
}

fn from_safetensors(path: &Path, st: &SafeTensors<'_>, layout: &Layout, prefix: &str, tied: bool) -> Result<Vec<f32>> {
    let p = path.display().to_string();
    let out = read_layout(st, &p, layout, prefix, false)?;
    for name in st.names() {
        let known = name.strip_prefix(prefix).is_some_and(|n| layout.find(n).is_some());
        // a tied checkpoint may still carry the shared lm_head copy: it is the embedding
        let tied_copy = tied && name == format!("{prefix}lm_head.weight");
        if !known && !tied_copy {
            return Err(Error::Tensor {
                path: p.clone(),
                name: name.to_string(),
                reason: "unexpected tensor: not in this config's parameter table".into(),
            });
        }
    }
    Ok(out)
}

/// Reads and validates `dir/config.json` (a regular file of at most
/// [`crate::limits::MAX_TEXT_FILE`] bytes) and derives its dims.
///
/// # Errors
/// [`Error::Io`], [`Error::TooLarge`], config errors.
pub fn load_config(dir: &Path) -> Result<(ModelConfig, crate::config::Dims)> {
    let path = dir.join(CONFIG_FILE);
    let config = ModelConfig::from_json(&crate::limits::read_text(&path)?).map_err(|e| match e {
        Error::Json { source, .. } => Error::Json { what: path.display().to_string(), source },
        e => e,
    })?;
    let dims = config.dims()?;
    Ok((config, dims))
}

/// Reads a safetensors file whose tensors will be decoded into `arena_bytes` of weights, after
/// checking, before anything is allocated, that it is a regular file, that its header fits
/// ([`crate::shards::check_truncation`]), and that the file plus the arena fit in the memory
/// budget.
///
/// # Errors
/// [`Error::Io`], [`Error::Safetensors`], [`Error::Tensor`], [`Error::TooLarge`].
pub(crate) fn read_weights_file(path: &Path, arena_bytes: u64) -> Result<Vec<u8>> {
    let (_, len) = crate::limits::open_regular(path, u64::MAX)?;
    crate::shards::check_truncation(path)?;
    crate::limits::check_budget(
        format!("loading {} ({len} bytes) into {arena_bytes} bytes of weights", path.display()),
        len.checked_add(arena_bytes),
    )?;
    crate::limits::read_regular(path, len)
}

/// Refuses a file whose header holds fewer tensors than `layers` layers need (at least 8 each):
/// the config does not belong to these weights, and its table is not built.
fn check_tensor_count(path: &Path, st: &SafeTensors<'_>, layers: usize, per_layer: u64) -> Result<()> {
    let need = (layers as u64).saturating_mul(per_layer);
    if (st.len() as u64) < need {
        return Err(Error::Safetensors {
            path: path.display().to_string(),
            reason: format!(
                "the header holds {} tensors, but the config's {layers} layers need at least {need}: config.json and the weights do not belong together",
                st.len()
            ),
        });
    }
    Ok(())
}

/// Writes `config.json` and `model.safetensors` into `dir` (created if needed), atomically each.
/// The weights are f32 ([`WEIGHTS_DTYPE`]) and the config's `"dtype"` says so, also for a model
/// loaded from a bf16 or f16 checkpoint ([`ModelConfig::to_json`]).
///
/// # Errors
/// [`Error::Io`], [`Error::Safetensors`].
pub fn save_model(dir: &Path, model: &GlaModel) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))?;
    write_atomic(&dir.join(CONFIG_FILE), model.config.to_json().as_bytes())?;
    write_atomic(&dir.join(WEIGHTS_FILE), &to_safetensors(&model.layout, &model.params, "", true)?)
}

/// Loads a model directory written by [`save_model`] or by fla / Hugging Face (`save_pretrained`,
/// single-file safetensors).
///
/// # Errors
/// [`Error::Io`]; config errors ([`Error::Json`], [`Error::Unsupported`], ...); [`Error::Tensor`]
/// naming a missing, unexpected or mis-shaped tensor with its expected shape.
pub fn load_model(dir: &Path) -> Result<GlaModel> {
    let (config, dims) = load_config(dir)?;
    let arena = crate::limits::check_model(&dims, 1)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = read_weights_file(&path, arena)?;
    let p = path.display().to_string();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors { path: p.clone(), reason: e.to_string() })?;
    check_tensor_count(&path, &st, dims.layers, 8)?;
    let layout = Layout::new(&dims);
    let params = from_safetensors(&path, &st, &layout, "", dims.tied)?;
    GlaModel::from_params(config, params)
}

/// Writes AdamW moments as `exp_avg.<name>` and `exp_avg_sq.<name>` (two files' worth in one).
pub(crate) fn save_moments(path: &Path, layout: &Layout, m: &[f32], v: &[f32]) -> Result<()> {
    // one safetensors file holding both moment sets
    let mut specs = layout.specs.clone();
    let n = layout.numel;
    let mut both = Vec::with_capacity(2 * n);
    both.extend_from_slice(m);
    both.extend_from_slice(v);
    let mut second: Vec<_> = layout
        .specs
        .iter()
        .cloned()
        .map(|mut s| {
            s.name = format!("exp_avg_sq.{}", s.name);
            s.offset += n;
            s
        })
        .collect();
    specs.iter_mut().for_each(|s| s.name = format!("exp_avg.{}", s.name));
    specs.append(&mut second);
    let lay = Layout { specs, numel: 2 * n, ..layout.clone() };
    write_atomic(path, &to_safetensors(&lay, &both, "", false)?)
}

/// Reads what [`save_moments`] wrote.
pub(crate) fn load_moments(path: &Path, layout: &Layout) -> Result<(Vec<f32>, Vec<f32>)> {
    let bytes = read_weights_file(path, (layout.numel as u64).saturating_mul(8))?;
    let m = from_safetensors_prefixed(path, &bytes, layout, "exp_avg.")?;
    let v = from_safetensors_prefixed(path, &bytes, layout, "exp_avg_sq.")?;
    Ok((m, v))
}

fn from_safetensors_prefixed(path: &Path, bytes: &[u8], layout: &Layout, prefix: &str) -> Result<Vec<f32>> {
    // the moment file holds two prefixes; check only this one's names
    let p = path.display().to_string();
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors { path: p.clone(), reason: e.to_string() })?;
    read_layout(&st, &p, layout, prefix, true)
}

/// The newest complete checkpoint directory of a run, from its `latest` file.
///
/// # Errors
/// [`Error::Io`] when there is no `latest` file; [`Error::Resume`] when it names a missing
/// directory.
pub fn latest_checkpoint(run: &Path) -> Result<PathBuf> {
    let f = run.join(LATEST_FILE);
    let name = crate::limits::read_text(&f)?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Resume { reason: format!("{} holds {name:?}, not the name of a checkpoint directory of the run", f.display()) });
    }
    let dir = run.join(name);
    if !dir.join(STATE_FILE).is_file() {
        return Err(Error::Resume { reason: format!("{} names {}, which holds no {STATE_FILE}", f.display(), dir.display()) });
    }
    Ok(dir)
}

/// Removes the temporary checkpoint directories (`.tmp-checkpoint-*`) that a process killed
/// while saving left in `run`. Only for the run's owner (the caller holds the run's lock): a
/// live save of another process would lose its directory.
///
/// # Errors
/// [`Error::Io`] when a directory cannot be listed or removed.
pub fn remove_stale_temps(run: &Path) -> Result<usize> {
    let entries = match fs::read_dir(run) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list", run, e)),
    };
    let mut removed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with(".tmp-checkpoint-") && e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(e.path()).map_err(|err| Error::io("remove", &e.path(), err))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Publishes a fully written checkpoint: renames `tmp` to `run/<name>` and points `latest` at
/// it. Removes older `checkpoint-*` directories except the `keep` newest.
pub(crate) fn publish(run: &Path, tmp: &Path, name: &str, keep: usize) -> Result<PathBuf> {
    let dst = run.join(name);
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(|e| Error::io("remove", &dst, e))?;
    }
    fs::rename(tmp, &dst).map_err(|e| Error::io("rename", &dst, e))?;
    sync_dir(Some(run));
    write_atomic(&run.join(LATEST_FILE), name.as_bytes())?;
    let mut old: Vec<(u64, PathBuf)> = fs::read_dir(run)
        .map_err(|e| Error::io("list", run, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("checkpoint-").and_then(|s| s.parse().ok()).map(|s| (s, e.path()))
        })
        .collect();
    old.sort();
    let excess = old.len().saturating_sub(keep.max(1));
    for (_, p) in old.into_iter().take(excess) {
        if p != dst {
            let _ = fs::remove_dir_all(p);
        }
    }
    Ok(dst)
}

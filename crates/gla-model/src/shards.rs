//! Loading a model directory for inference: a single `model.safetensors` (through
//! [`crate::checkpoint::load_model`]) or a sharded checkpoint (`model.safetensors.index.json`
//! with its `weight_map`, as Hugging Face's `save_pretrained` writes large models). Every tensor
//! of the config's parameter table must be present once with its shape (f32, bf16 or f16);
//! errors name the file, the tensor and the expected shape.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::checkpoint::{decode_tensor, load_model, CONFIG_FILE, WEIGHTS_FILE};
use crate::layout::Layout;
use crate::model::GlaModel;
use crate::{Error, Result};

/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Loads `dir`: `model.safetensors` when present, else the shards named by
/// `model.safetensors.index.json`.
///
/// # Errors
/// [`Error::Io`] (no weights file, unreadable file), [`Error::Json`] (config or index),
/// config errors, [`Error::Safetensors`] (corrupt or truncated file), [`Error::Tensor`] naming a
/// missing, unexpected or mis-shaped tensor and its expected shape.
pub fn load_model_dir(dir: &Path) -> Result<GlaModel> {
    if dir.join(WEIGHTS_FILE).exists() || !dir.join(INDEX_FILE).exists() {
        return load_model(dir);
    }
    let (config, dims) = crate::checkpoint::load_config(dir)?;
    let index_path = dir.join(INDEX_FILE);
    let index_text = crate::limits::read_text(&index_path)?;
    let index: serde_json::Value =
        serde_json::from_str(&index_text).map_err(|source| Error::Json { what: index_path.display().to_string(), source })?;
    let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Tensor {
        path: index_path.display().to_string(),
        name: "weight_map".into(),
        reason: "missing: the index must map every tensor name to its shard file".into(),
    })?;
    // shard file -> names it should hold
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Tensor {
            path: index_path.display().to_string(),
            name: name.clone(),
            reason: format!("weight_map value is not a file name: {file}"),
        })?;
        shards.entry(file.to_string()).or_default().push(name.clone());
    }
    // the index must name every tensor of the table: a table far longer than the index is a
    // config that does not belong to these weights, refused before the table is built
    let count = crate::limits::param_count(&dims).unwrap_or(u64::MAX);
    let min_tensors = (dims.layers as u64).saturating_mul(8);
    if min_tensors > map.len() as u64 {
        return Err(Error::Tensor {
            path: index_path.display().to_string(),
            name: "weight_map".into(),
            reason: format!(
                "names {} tensors, but the config's {} layers need at least {min_tensors}: config.json and the index do not belong together",
                map.len(),
                dims.layers
            ),
        });
    }
    let layout = Layout::new(&dims);
    let tied_head = dims.tied.then_some("lm_head.weight");
    for name in map.keys() {
        if layout.find(name).is_none() && Some(name.as_str()) != tied_head {
            return Err(Error::Tensor {
                path: index_path.display().to_string(),
                name: name.clone(),
                reason: "unexpected tensor: not in this config's parameter table".into(),
            });
        }
    }
    for s in &layout.specs {
        if !map.contains_key(&s.name) {
            return Err(Error::Tensor {
                path: index_path.display().to_string(),
                name: s.name.clone(),
                reason: format!("missing (expected shape {:?})", s.shape),
            });
        }
    }
    // the shards together must hold every parameter at 2 bytes or more (bf16 / f16)
    let mut total = 0u64;
    for file in shards.keys() {
        if let Ok(m) = fs::metadata(dir.join(file)) {
            total = total.saturating_add(m.len());
        }
    }
    if count.saturating_mul(2) > total {
        return Err(Error::Tensor {
            path: index_path.display().to_string(),
            name: "weight_map".into(),
            reason: format!("the config describes {count} parameters, but its shards hold only {total} bytes: config.json and the shards do not belong together"),
        });
    }
    let arena = crate::limits::check_model(&dims, 1)?;
    let mut params = vec![0.0f32; layout.numel];
    for (file, names) in &shards {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::Tensor {
                path: index_path.display().to_string(),
                name: names[0].clone(),
                reason: format!("shard name {file:?} leaves the model directory"),
            });
        }
        let path = dir.join(file);
        let p = path.display().to_string();
        let (_, len) = crate::limits::open_regular(&path, u64::MAX)?;
        check_truncation(&path)?;
        crate::limits::check_budget(format!("loading shard {p} ({len} bytes) beside {arena} bytes of weights"), len.checked_add(arena))?;
        let bytes = crate::limits::read_regular(&path, len)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors { path: p.clone(), reason: e.to_string() })?;
        for name in names {
            let Some(id) = layout.find(name) else { continue }; // the tied lm_head copy
            let spec = &layout.specs[id];
            let t = st.tensor(name).map_err(|_| Error::Tensor {
                path: p.clone(),
                name: name.clone(),
                reason: format!("missing from this shard, which the index names for it (expected shape {:?})", spec.shape),
            })?;
            decode_tensor(&mut params[spec.range()], &t, &p, name, &spec.shape)?;
        }
    }
    GlaModel::from_params(config, params)
}

/// Reads only the header of a safetensors file and names the first tensor whose data lies past
/// the end of the file (a truncated download or copy), with its shape and dtype.
///
/// # Errors
/// [`Error::Io`]; [`Error::Safetensors`] when the header itself is cut or not JSON;
/// [`Error::Tensor`] naming the first truncated tensor.
pub fn check_truncation(path: &Path) -> Result<()> {
    use std::io::Read;
    let p = path.display().to_string();
    let io = |op: &'static str| move |e| Error::Io { op, path: path.display().to_string(), source: e };
    let (mut f, len) = crate::limits::open_regular(path, u64::MAX)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| Error::Safetensors { path: p.clone(), reason: format!("{len} bytes: too short for a header") })?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100_000_000 {
        return Err(Error::Safetensors {
            path: p,
            reason: format!("header of {n} bytes does not fit in the file's {len} bytes (truncated or not safetensors)"),
        });
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(io("read"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&h).map_err(|e| Error::Safetensors { path: p.clone(), reason: format!("header is not JSON: {e}") })?;
    let Some(map) = header.as_object() else {
        return Err(Error::Safetensors { path: p, reason: "header is not a JSON object".into() });
    };
    let mut worst: Option<(u64, &String, &serde_json::Value)> = None;
    for (name, t) in map.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let start = t.get("data_offsets").and_then(|o| o.get(0)).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let end = t.get("data_offsets").and_then(|o| o.get(1)).and_then(serde_json::Value::as_u64).unwrap_or(0);
        if (8 + n).saturating_add(end) > len && worst.is_none_or(|(s, ..)| start < s) {
            worst = Some((start, name, t));
        }
    }
    if let Some((_, name, t)) = worst {
        let end = t.get("data_offsets").and_then(|o| o.get(1)).and_then(serde_json::Value::as_u64).unwrap_or(0);
        return Err(Error::Tensor {
            path: p,
            name: name.clone(),
            reason: format!(
                "truncated file: this tensor ({} {}) ends at byte {} but the file has {len} bytes",
                t.get("dtype").and_then(serde_json::Value::as_str).unwrap_or("?"),
                t.get("shape").map(ToString::to_string).unwrap_or_default(),
                (8 + n).saturating_add(end)
            ),
        });
    }
    Ok(())
}

/// Writes `model` as a sharded checkpoint: `config.json`, `model-0000i-of-0000n.safetensors`
/// (about `shard_bytes` each, f32) and `model.safetensors.index.json`, as Hugging Face does.
///
/// # Errors
/// [`Error::Io`], [`Error::Safetensors`].
pub fn save_sharded(dir: &Path, model: &GlaModel, shard_bytes: usize) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::Io { op: "create dir", path: dir.display().to_string(), source: e })?;
    crate::checkpoint::write_atomic(&dir.join(CONFIG_FILE), model.config.to_json().as_bytes())?;
    // group tensors in table order into shards
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, s) in model.layout.specs.iter().enumerate() {
        let b = 4 * s.numel();
        if size > 0 && size + b > shard_bytes {
            groups.push(Vec::new());
            size = 0;
        }
        if let Some(g) = groups.last_mut() {
            g.push(i);
        }
        size += b;
    }
    let n = groups.len();
    let mut map = serde_json::Map::new();
    for (gi, g) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", gi + 1);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = g
            .iter()
            .map(|&i| {
                let s = &model.layout.specs[i];
                (s.name.clone(), s.shape.clone(), model.params[s.range()].iter().flat_map(|v| v.to_le_bytes()).collect())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, b)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Safetensors { path: file.clone(), reason: e.to_string() })
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
        let data = safetensors::serialize(views, meta).map_err(|e| Error::Safetensors { path: file.clone(), reason: e.to_string() })?;
        crate::checkpoint::write_atomic(&dir.join(&file), &data)?;
        for &i in g {
            map.insert(model.layout.specs[i].name.clone(), file.clone().into());
        }
    }
    let total: usize = model.layout.specs.iter().map(|s| 4 * s.numel()).sum();
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": map });
    crate::checkpoint::write_atomic(&dir.join(INDEX_FILE), serde_json::to_string_pretty(&index).unwrap_or_default().as_bytes())
}

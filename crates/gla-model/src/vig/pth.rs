//! ViG checkpoints: hustvl's published `.pth` files read directly, and safetensors both ways.
//!
//! A `.pth` is what `torch.save` writes: a zip archive (stored entries, no compression) holding
//! `<archive>/data.pkl`, a pickle (protocol 2) of the saved object, and one entry
//! `<archive>/data/<key>` per tensor storage. The pickle of a state dict builds each tensor by
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, the
//! storage a persistent id `('storage', torch.FloatStorage, key, location, numel)`. This reader
//! runs the subset of the pickle machine those files use (and builds unknown objects as opaque
//! values, so that other entries of the saved dict do not stop it), checks every entry's CRC-32,
//! and takes fp32, little-endian, contiguous tensors only; anything else is a typed
//! [`Error::Pth`]. hustvl saves `{'model': state_dict}`; a bare state dict is taken too.

use std::collections::HashMap;
use std::path::Path;

use super::{VigConfig, VigModel};
use crate::{Error, Result};

/// One tensor of a state dict: PyTorch shape and f32 data.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major data.
    pub data: Vec<f32>,
}

fn err(path: &str, reason: impl Into<String>) -> Error {
    Error::Pth { path: path.into(), reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// zip

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| t[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// A little-endian reader over a byte slice with bounds checks.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }
}

/// The stored entries of a zip archive: name -> data (CRC-checked).
fn zip_entries<'a>(b: &'a [u8], path: &str) -> Result<HashMap<String, &'a [u8]>> {
    let trunc = || err(path, "truncated or not a zip archive (no end of central directory)");
    let min = b.len().saturating_sub(22 + 65535);
    let eocd = (min..=b.len().saturating_sub(22)).rev().find(|&i| b[i..].starts_with(b"PK\x05\x06")).ok_or_else(trunc)?;
    let mut r = Rd { b, at: eocd + 10 };
    let (mut count, _size, mut cd_off) = (r.u16().ok_or_else(trunc)? as u64, r.u32().ok_or_else(trunc)?, r.u32().ok_or_else(trunc)? as u64);
    // zip64: the locator sits just before the end record
    if count == 0xFFFF || cd_off == 0xFFFF_FFFF {
        let loc = eocd.checked_sub(20).filter(|&i| b[i..].starts_with(b"PK\x06\x07")).ok_or_else(trunc)?;
        let mut r = Rd { b, at: loc + 8 };
        let z = r.u64().ok_or_else(trunc)? as usize;
        if !b.get(z..).is_some_and(|s| s.starts_with(b"PK\x06\x06")) {
            return Err(trunc());
        }
        let mut r = Rd { b, at: z + 32 };
        count = r.u64().ok_or_else(trunc)?;
        let _ = r.u64();
        cd_off = r.u64().ok_or_else(trunc)?;
    }
    let mut out = HashMap::new();
    let mut r = Rd { b, at: usize::try_from(cd_off).map_err(|_| trunc())? };
    for _ in 0..count {
        let bad = || err(path, "corrupt central directory");
        if r.u32() != Some(0x0201_4b50) {
            return Err(bad());
        }
        r.take(6).ok_or_else(bad)?;
        let method = r.u16().ok_or_else(bad)?;
        r.take(4).ok_or_else(bad)?;
        let crc = r.u32().ok_or_else(bad)?;
        let (mut csize, mut usize_) = (r.u32().ok_or_else(bad)? as u64, r.u32().ok_or_else(bad)? as u64);
        let (nlen, xlen, clen) = (r.u16().ok_or_else(bad)? as usize, r.u16().ok_or_else(bad)? as usize, r.u16().ok_or_else(bad)? as usize);
        r.take(8).ok_or_else(bad)?;
        let mut lho = r.u32().ok_or_else(bad)? as u64;
        let name = String::from_utf8_lossy(r.take(nlen).ok_or_else(bad)?).into_owned();
        let extra = r.take(xlen).ok_or_else(bad)?;
        r.take(clen).ok_or_else(bad)?;
        // zip64 extra field: the 0xFFFFFFFF fields in order
        let mut x = Rd { b: extra, at: 0 };
        while let (Some(id), Some(len)) = (x.u16(), x.u16()) {
            let field = x.take(len as usize).ok_or_else(bad)?;
            if id == 1 {
                let mut f = Rd { b: field, at: 0 };
                for v in [&mut usize_, &mut csize, &mut lho] {
                    if *v == 0xFFFF_FFFF {
                        *v = f.u64().ok_or_else(bad)?;
                    }
                }
            }
        }
        if method != 0 {
            return Err(err(path, format!("entry {name} is compressed (method {method}); torch.save stores entries uncompressed")));
        }
        if csize != usize_ {
            return Err(bad());
        }
        let mut l = Rd { b, at: usize::try_from(lho).map_err(|_| bad())? };
        if l.u32() != Some(0x0403_4b50) {
            return Err(err(path, format!("entry {name}: bad local header")));
        }
        l.take(22).ok_or_else(trunc)?;
        let (ln, lx) = (l.u16().ok_or_else(trunc)? as usize, l.u16().ok_or_else(trunc)? as usize);
        l.take(ln + lx).ok_or_else(trunc)?;
        let data = l.take(usize::try_from(csize).map_err(|_| trunc())?).ok_or_else(|| err(path, format!("entry {name} is truncated")))?;
        if crc32(data) != crc {
            return Err(err(path, format!("entry {name} fails its CRC-32 check (the file is corrupt)")));
        }
        out.insert(name, data);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// pickle

/// A pickled value (the subset torch's state dicts use; other objects stay opaque).
#[derive(Debug, Clone, PartialEq)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(String, String),
    PersId(Box<Val>),
    Tensor(TensorRef),
    Opaque,
    Mark,
}

#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: String,
    dtype: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn ints(v: &Val) -> Option<Vec<usize>> {
    match v {
        Val::Tuple(xs) => xs.iter().map(|x| if let Val::Int(i) = x { usize::try_from(*i).ok() } else { None }).collect(),
        _ => None,
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)` with a persistent-id storage.
fn rebuild_tensor(args: &Val) -> Option<TensorRef> {
    let Val::Tuple(a) = args else { return None };
    let Val::PersId(pid) = a.first()? else { return None };
    let Val::Tuple(p) = &**pid else { return None };
    let (Val::Str(kind), Val::Global(_, dtype), Val::Str(key)) = (p.first()?, p.get(1)?, p.get(2)?) else { return None };
    if kind != "storage" {
        return None;
    }
    let Val::Int(off) = a.get(1)? else { return None };
    Some(TensorRef {
        storage: key.clone(),
        dtype: dtype.clone(),
        offset: usize::try_from(*off).ok()?,
        size: ints(a.get(2)?)?,
        stride: ints(a.get(3)?)?,
    })
}

fn unpickle(b: &[u8], path: &str) -> Result<Val> {
    let mut r = Rd { b, at: 0 };
    let mut st: Vec<Val> = Vec::new();
    let mut memo: HashMap<u32, Val> = HashMap::new();
    let bad = |what: &str| err(path, format!("data.pkl: {what}"));
    let trunc = || bad("truncated pickle");
    let pop = |st: &mut Vec<Val>| st.pop().ok_or_else(|| bad("stack underflow"));
    let pop_mark = |st: &mut Vec<Val>| -> Result<Vec<Val>> {
        let m = st.iter().rposition(|v| *v == Val::Mark).ok_or_else(|| bad("no mark"))?;
        let items = st.split_off(m + 1);
        st.pop();
        Ok(items)
    };
    loop {
        let op = r.u8().ok_or_else(trunc)?;
        match op {
            0x80 => {
                r.u8().ok_or_else(trunc)?; // PROTO
            }
            0x95 => {
                r.u64().ok_or_else(trunc)?; // FRAME
            }
            b'.' => return pop(&mut st),
            b'}' => st.push(Val::Dict(Vec::new())),
            b']' => st.push(Val::List(Vec::new())),
            b')' => st.push(Val::Tuple(Vec::new())),
            b'(' => st.push(Val::Mark),
            b'N' => st.push(Val::None),
            0x88 => st.push(Val::Bool(true)),
            0x89 => st.push(Val::Bool(false)),
            b'K' => st.push(Val::Int(r.u8().ok_or_else(trunc)? as i64)),
            b'M' => st.push(Val::Int(r.u16().ok_or_else(trunc)? as i64)),
            b'J' => st.push(Val::Int(r.u32().ok_or_else(trunc)? as i32 as i64)),
            0x8a => {
                let n = r.u8().ok_or_else(trunc)? as usize;
                let s = r.take(n).ok_or_else(trunc)?;
                if n > 8 {
                    return Err(bad("integer wider than 64 bits"));
                }
                let mut v = if s.last().is_some_and(|&x| x & 0x80 != 0) { -1i64 } else { 0 };
                for (i, &x) in s.iter().enumerate() {
                    v = (v & !(0xFF << (8 * i))) | ((x as i64) << (8 * i));
                }
                st.push(Val::Int(v));
            }
            b'G' => {
                let s = r.take(8).ok_or_else(trunc)?;
                st.push(Val::Float(f64::from_be_bytes(s.try_into().unwrap_or([0; 8]))));
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32().ok_or_else(trunc)? as usize,
                    0x8c => r.u8().ok_or_else(trunc)? as usize,
                    _ => usize::try_from(r.u64().ok_or_else(trunc)?).map_err(|_| trunc())?,
                };
                let s = r.take(n).ok_or_else(trunc)?;
                st.push(Val::Str(String::from_utf8(s.to_vec()).map_err(|_| bad("invalid UTF-8 string"))?));
            }
            b'B' | b'C' => {
                let n = if op == b'B' { r.u32().ok_or_else(trunc)? as usize } else { r.u8().ok_or_else(trunc)? as usize };
                st.push(Val::Bytes(r.take(n).ok_or_else(trunc)?.to_vec()));
            }
            b'q' | b'r' | 0x94 => {
                let i = match op {
                    b'q' => r.u8().ok_or_else(trunc)? as u32,
                    b'r' => r.u32().ok_or_else(trunc)?,
                    _ => memo.len() as u32,
                };
                memo.insert(i, st.last().cloned().ok_or_else(|| bad("stack underflow"))?);
            }
            b'h' | b'j' => {
                let i = if op == b'h' { r.u8().ok_or_else(trunc)? as u32 } else { r.u32().ok_or_else(trunc)? };
                st.push(memo.get(&i).cloned().ok_or_else(|| bad("memo miss"))?);
            }
            b'c' => {
                let mut line = || -> Result<String> {
                    let start = r.at;
                    let end = b[start..].iter().position(|&x| x == b'\n').ok_or_else(trunc)? + start;
                    r.at = end + 1;
                    Ok(String::from_utf8_lossy(&b[start..end]).into_owned())
                };
                let (m, n) = (line()?, line()?);
                st.push(Val::Global(m, n));
            }
            0x93 => {
                let n = pop(&mut st)?;
                let m = pop(&mut st)?;
                match (m, n) {
                    (Val::Str(m), Val::Str(n)) => st.push(Val::Global(m, n)),
                    _ => return Err(bad("STACK_GLOBAL of non-strings")),
                }
            }
            b't' => {
                let items = pop_mark(&mut st)?;
                st.push(Val::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = st.len().checked_sub(n).ok_or_else(|| bad("stack underflow"))?;
                let items = st.split_off(at);
                st.push(Val::Tuple(items));
            }
            b'Q' => {
                let pid = pop(&mut st)?;
                st.push(Val::PersId(Box::new(pid)));
            }
            b'R' | 0x81 => {
                let args = pop(&mut st)?;
                let f = pop(&mut st)?;
                let v = match &f {
                    Val::Global(m, n) if m == "collections" && n == "OrderedDict" => Val::Dict(Vec::new()),
                    Val::Global(m, n) if m == "torch._utils" && n == "_rebuild_tensor_v2" => {
                        Val::Tensor(rebuild_tensor(&args).ok_or_else(|| bad("unexpected _rebuild_tensor_v2 arguments"))?)
                    }
                    _ => Val::Opaque,
                };
                st.push(v);
            }
            b'b' => {
                pop(&mut st)?; // BUILD: the state (an OrderedDict's `_metadata`) is not needed
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut st)?;
                    let k = pop(&mut st)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut st)?
                };
                match st.last_mut() {
                    Some(Val::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    Some(Val::Opaque) => {}
                    _ => return Err(bad("SETITEM on a non-dict")),
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop(&mut st)?] } else { pop_mark(&mut st)? };
                match st.last_mut() {
                    Some(Val::List(l)) => l.extend(items),
                    Some(Val::Opaque) => {}
                    _ => return Err(bad("APPEND on a non-list")),
                }
            }
            _ => return Err(bad(&format!("pickle opcode 0x{op:02x} is not one torch.save writes for a state dict"))),
        }
    }
}

/// Reads a `.pth` state dict from bytes: its tensors in the file's order.
///
/// # Errors
/// [`Error::Pth`] for anything but a zip of stored, CRC-valid entries holding a pickled
/// `{'model': state_dict}` (or a bare state dict) of fp32, little-endian, contiguous tensors.
pub fn read_state_dict(bytes: &[u8], path: &str) -> Result<Vec<(String, PthTensor)>> {
    let entries = zip_entries(bytes, path)?;
    let pkl_name = entries
        .keys()
        .find(|k| k.ends_with("/data.pkl") || *k == "data.pkl")
        .ok_or_else(|| err(path, "no data.pkl entry (not a torch.save file)"))?;
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    if let Some(bo) = entries.get(&format!("{prefix}byteorder")) {
        if *bo != b"little" {
            return Err(err(path, format!("byte order {:?}; only little-endian files are read", String::from_utf8_lossy(bo))));
        }
    }
    let root = unpickle(entries[pkl_name], path)?;
    let Val::Dict(top) = root else { return Err(err(path, "the saved object is not a dict")) };
    let sd = match top.iter().find(|(k, _)| *k == Val::Str("model".into())) {
        Some((_, Val::Dict(sd))) => sd.clone(),
        Some(_) => return Err(err(path, "'model' is not a state dict")),
        None => top,
    };
    if sd.is_empty() {
        return Err(err(path, "the state dict holds no tensor"));
    }
    let mut out = Vec::with_capacity(sd.len());
    for (k, v) in sd {
        let Val::Str(name) = k else { return Err(err(path, "a state dict key is not a string")) };
        let Val::Tensor(t) = v else { return Err(err(path, format!("`{name}` is not a tensor"))) };
        if t.dtype != "FloatStorage" {
            return Err(err(path, format!("`{name}` is a {} tensor; only float32 (FloatStorage) is read", t.dtype)));
        }
        let numel = t
            .size
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .ok_or_else(|| err(path, format!("`{name}`: size {:?} overflows", t.size)))?;
        let mut expect = 1usize;
        for (i, (&s, &st)) in t.size.iter().zip(&t.stride).enumerate().rev() {
            if s > 1 && st != expect {
                return Err(err(path, format!("`{name}` is not contiguous (stride {:?} of size {:?}, dim {i})", t.stride, t.size)));
            }
            expect = expect.saturating_mul(s);
        }
        if t.size.len() != t.stride.len() {
            return Err(err(path, format!("`{name}`: size and stride ranks differ")));
        }
        let data = entries
            .get(&format!("{prefix}data/{}", t.storage))
            .ok_or_else(|| err(path, format!("`{name}`: storage {} is missing", t.storage)))?;
        let short = || err(path, format!("`{name}`: storage {} is too short", t.storage));
        let end = t.offset.checked_add(numel).and_then(|e| e.checked_mul(4)).ok_or_else(short)?;
        let bytes = data.get(t.offset * 4..end).ok_or_else(short)?;
        let data = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.push((name, PthTensor { shape: t.size, data }));
    }
    Ok(out)
}

/// A table's weights from named tensors: every table row must be present with its shape;
/// unknown names are refused.
fn fill(model: &mut VigModel, tensors: Vec<(String, PthTensor)>, path: &str) -> Result<()> {
    let mut seen = vec![false; model.layout.specs.len()];
    for (name, t) in tensors {
        let id = model.layout.find(&name).ok_or_else(|| Error::Tensor {
            path: path.into(),
            name: name.clone(),
            reason: "not a parameter of this config's ViG".into(),
        })?;
        let spec = &model.layout.specs[id];
        if spec.shape != t.shape {
            return Err(Error::Tensor {
                path: path.into(),
                name,
                reason: format!("shape {:?}, the config gives {:?}", t.shape, spec.shape),
            });
        }
        model.params[spec.range()].copy_from_slice(&t.data);
        seen[id] = true;
    }
    if let Some(i) = seen.iter().position(|&s| !s) {
        return Err(Error::Tensor {
            path: path.into(),
            name: model.layout.specs[i].name.clone(),
            reason: "missing from the checkpoint".into(),
        });
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { op: "read", path: path.display().to_string(), source })
}

/// Loads hustvl's `.pth` checkpoint into a ViG of `config`.
///
/// # Errors
/// [`Error::Io`], [`Error::Pth`] for the file; [`Error::Tensor`] for a missing, unknown or
/// misshapen tensor; the config's errors.
pub fn load_pth(path: &Path, config: VigConfig) -> Result<VigModel> {
    let p = path.display().to_string();
    let tensors = read_state_dict(&read(path)?, &p)?;
    let mut m = VigModel::new(config, 0)?;
    fill(&mut m, tensors, &p)?;
    Ok(m)
}

/// Loads a ViG's weights from safetensors (hustvl's names, f32).
///
/// # Errors
/// [`Error::Io`], [`Error::Safetensors`] for the file; [`Error::Tensor`] for a missing, unknown,
/// misshapen or non-f32 tensor; the config's errors.
pub fn load_safetensors(path: &Path, config: VigConfig) -> Result<VigModel> {
    let p = path.display().to_string();
    let bytes = read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors { path: p.clone(), reason: e.to_string() })?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::Tensor { path: p.clone(), name, reason: format!("dtype {:?}; f32 expected", view.dtype()) });
        }
        let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.push((name, PthTensor { shape: view.shape().to_vec(), data }));
    }
    let mut m = VigModel::new(config, 0)?;
    fill(&mut m, tensors, &p)?;
    Ok(m)
}

/// Writes a ViG's weights as safetensors (hustvl's names, f32), atomically.
///
/// # Errors
/// [`Error::Io`] for the file; [`Error::Safetensors`] from the serializer.
pub fn save_safetensors(model: &VigModel, path: &Path) -> Result<()> {
    let p = path.display().to_string();
    let bytes: Vec<Vec<u8>> =
        model.layout.specs.iter().map(|s| model.params[s.range()].iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (s, b) in model.layout.specs.iter().zip(&bytes) {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.shape.clone(), b)
            .map_err(|e| Error::Safetensors { path: p.clone(), reason: e.to_string() })?;
        views.push((s.name.clone(), v));
    }
    let out = safetensors::serialize(views, None).map_err(|e| Error::Safetensors { path: p.clone(), reason: e.to_string() })?;
    gla_core::io::write_atomic(path, &out).map_err(|source| Error::Io { op: "write", path: p, source })
}

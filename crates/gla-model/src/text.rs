//! A text corpus for causal language modelling: a text file or a folder of them, tokenised once
//! (byte-level, or a Hugging Face `tokenizer.json` with the `hf-tokenizer` feature) into a token
//! file that is memory-mapped for training and sampled in random windows.
//!
//! The pipeline, and why each step is the way it is:
//!
//! 1. [`list_sources`]: the regular files under the path, recursively, in sorted path order (so
//!    the token stream does not depend on the directory listing order). Hidden entries (`.name`),
//!    token files (`*.glatok`) and symbolic links to directories (they can loop) are skipped.
//!    Their relative paths, sizes and modification times form the *source key*: like `make` and
//!    `cargo`, a change of any file's size or mtime means the text changed, without reading it.
//! 2. [`prepare`]: reuses the cached token file when its header records the same source key and
//!    tokenizer; otherwise tokenises every text file (a file with a NUL byte in its first 8000
//!    bytes is binary and skipped, git's rule), appends the tokenizer's end-of-sequence token
//!    after each document when it has one, and streams the tokens into a temporary file that is
//!    synced and renamed over the cache: a kill leaves the old file or the new one, never half.
//! 3. [`TokenFile::open`]: maps the file and checks it whole before use (header, length,
//!    checksum, every id inside the vocabulary), so a damaged file is a typed error naming the
//!    file and the fault, never a panic or silent garbage in the middle of a run.
//! 4. [`TextTask`] (saved in the training state) fixes the split: the last `val_tokens` tokens
//!    are held out for evaluation. [`TextData`] draws training windows of `T + 1` tokens (inputs
//!    `w[..T]`, targets `w[1..]`: fla's next-token shift, with every position labelled) at
//!    uniform offsets of the training part. Window `i` depends only on `(data_seed, i)`
//!    ([`Rng::for_item`]), exactly like MQAR example `i`, so the data cursor saved in the
//!    training state is the sampler's whole state and `--resume` repeats the run bit for bit.
//!
//! # Token file format (version 1)
//!
//! A 64-byte little-endian header, then `count` token ids, little-endian `u16` when the
//! vocabulary has at most 65536 ids, `u32` otherwise:
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `[u8; 8]` | magic `GLATOKS\0` |
//! | 8 | u32 | version (1) |
//! | 12 | u32 | bytes per token (2 or 4) |
//! | 16 | u64 | token count |
//! | 24 | u64 | vocabulary size |
//! | 32 | u64 | tokenizer id ([`CorpusTokenizer::id`]) |
//! | 40 | u64 | source key (paths, sizes, mtimes) |
//! | 48 | u64 | checksum of the token bytes (FNV-1a 64) |
//! | 56 | u64 | documents (files) tokenised |

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, Rng};

/// The extension of token files; files with it are never read as text sources.
pub const TOKEN_FILE_EXT: &str = "glatok";
/// Length of the token file header in bytes.
pub const HEADER_LEN: usize = 64;
/// The token file format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"GLATOKS\0";
/// Bytes read from a file at a time while tokenising (a text file can be larger than memory).
const READ_CHUNK: usize = 4 << 20;
/// git's rule: a NUL byte in the first 8000 bytes makes a file binary.
const SNIFF_LEN: usize = 8000;

pub use crate::error::TextError;

fn text_err(e: TextError) -> Error {
    Error::Text(e)
}

fn corrupt(path: &Path, reason: String) -> Error {
    text_err(TextError::Corrupt { path: path.display().to_string(), reason })
}

fn hex(x: u64) -> String {
    format!("{x:016x}")
}

/// FNV-1a 64: a tiny streaming hash for change detection (not cryptographic).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, x: u64) {
        self.write(&x.to_le_bytes());
    }
}

/// A tokenizer for a corpus, with its identity (recorded in the token file and the run).
#[derive(Debug, Clone)]
pub struct CorpusTokenizer {
    inner: Tokenizer,
    id: u64,
    path: Option<PathBuf>,
    eos: Option<u32>,
}

/// The identity of a `tokenizer.json`: the hash of its bytes (any edit makes a new tokenizer).
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn tokenizer_file_id(path: &Path) -> Result<u64> {
    let bytes = crate::limits::read_regular(path, crate::limits::MAX_TEXT_FILE)?;
    let mut h = Fnv::new();
    h.write(b"tokenizer.json\0");
    h.write(&bytes);
    Ok(h.0)
}

impl CorpusTokenizer {
    /// The byte-level tokenizer (id = byte, vocabulary 256, no end-of-sequence token).
    pub fn bytes() -> Self {
        let mut h = Fnv::new();
        h.write(b"byte-level\0");
        Self { inner: Tokenizer::Bytes, id: h.0, path: None, eos: None }
    }

    /// A Hugging Face `tokenizer.json` (needs the cargo feature `hf-tokenizer`). Its
    /// end-of-sequence token, used to separate documents, is the first of `</s>`,
    /// `<|endoftext|>`, `<|end_of_text|>`, `<eos>`, `[SEP]` that it knows.
    ///
    /// # Errors
    /// [`TextError::Tokenizer`] naming the file (and, without the feature, saying how to get
    /// it); [`Error::Io`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            let reason = match e {
                crate::error::GenerateError::Tokenizer { reason } => reason,
                e => e.to_string(),
            };
            text_err(TextError::Tokenizer { reason })
        })?;
        let id = tokenizer_file_id(path)?;
        let eos = match &inner {
            Tokenizer::Bytes => None,
            #[cfg(feature = "hf-tokenizer")]
            Tokenizer::Hf(t) => ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]"].iter().find_map(|s| t.token_to_id(s)),
        };
        Ok(Self { inner, id, path: Some(path.to_path_buf()), eos })
    }

    /// `tokenizer.json` when a path is given, byte-level otherwise.
    ///
    /// # Errors
    /// As [`CorpusTokenizer::from_file`].
    pub fn load(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::bytes()), Self::from_file)
    }

    /// The identity recorded in token files: a hash of the `tokenizer.json` bytes, or a fixed
    /// value for byte-level.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The `tokenizer.json` it was loaded from (None: byte-level).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The number of ids it produces (the model's vocabulary must be at least this).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The token appended after each document, if the tokenizer has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// The inner tokenizer (for decoding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }

    /// Ids of a piece of a document, without special tokens (the pieces of one file are
    /// encoded separately; a BOS per piece would be wrong). Pieces end at a newline, which is a
    /// UTF-8 boundary and a pre-tokenizer split point of the usual tokenizers.
    fn encode_piece(&self, bytes: &[u8], out: &mut Vec<u32>) -> Result<()> {
        match &self.inner {
            Tokenizer::Bytes => out.extend(bytes.iter().map(|&b| b as u32)),
            #[cfg(feature = "hf-tokenizer")]
            Tokenizer::Hf(t) => {
                let text = String::from_utf8_lossy(bytes);
                let enc =
                    t.encode_fast(text.as_ref(), false).map_err(|e| text_err(TextError::Tokenizer { reason: format!("encode: {e}") }))?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(())
    }
}

/// The files of a source and their key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The source, canonical (absolute, links resolved).
    pub root: PathBuf,
    /// Regular files under it, sorted by path (the root itself when it is a file).
    pub files: Vec<PathBuf>,
    /// Hash of every file's relative path, size and modification time.
    pub key: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let e = e.map_err(|e| Error::io("list", dir, e))?;
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || p.extension().is_some_and(|x| x == TOKEN_FILE_EXT) {
            continue;
        }
        let ft = e.file_type().map_err(|e| Error::io("stat", &p, e))?;
        if ft.is_dir() {
            walk(&p, out)?;
        } else if ft.is_file() || (ft.is_symlink() && p.is_file()) {
            out.push(p);
        }
    }
    Ok(())
}

/// Lists the files of a text file or folder and computes its source key.
///
/// # Errors
/// [`TextError::Missing`] when the path does not exist; [`Error::Io`].
pub fn list_sources(path: &Path) -> Result<Sources> {
    let root = fs::canonicalize(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            text_err(TextError::Missing { path: path.display().to_string() })
        } else {
            Error::io("open", path, e)
        }
    })?;
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&root, &mut files)?;
        files.sort();
    } else {
        files.push(root.clone());
    }
    let mut h = Fnv::new();
    let mut bytes = 0;
    h.u64(files.len() as u64);
    for f in &files {
        let md = fs::metadata(f).map_err(|e| Error::io("stat", f, e))?;
        // relative names: moving the whole folder keeps the key
        let rel = f.strip_prefix(&root).ok().filter(|r| !r.as_os_str().is_empty()).unwrap_or(f.file_name().map_or(f.as_path(), Path::new));
        h.write(rel.to_string_lossy().as_bytes());
        h.write(&[0]);
        h.u64(md.len());
        let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
        h.u64(mtime.as_secs());
        h.u64(mtime.subsec_nanos() as u64);
        bytes += md.len();
    }
    Ok(Sources { root, files, key: h.0, bytes })
}

/// The header of a token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes per token: 2 (`u16`) or 4 (`u32`).
    pub width: u32,
    /// Tokens in the file.
    pub count: u64,
    /// Vocabulary size: every id is below it.
    pub vocab: u64,
    /// [`CorpusTokenizer::id`] of the tokenizer that made it.
    pub tokenizer_id: u64,
    /// [`Sources::key`] of the text it was made from.
    pub source_key: u64,
    /// FNV-1a 64 of the token bytes.
    pub checksum: u64,
    /// Documents (non-empty text files) tokenised.
    pub docs: u64,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.width.to_le_bytes());
        for (i, v) in [self.count, self.vocab, self.tokenizer_id, self.source_key, self.checksum, self.docs].into_iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn parse(path: &Path, b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(corrupt(path, format!("{} bytes, shorter than the {HEADER_LEN}-byte header", b.len())));
        }
        if &b[..8] != MAGIC {
            return Err(corrupt(path, "not a gla token file (bad magic bytes)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(corrupt(path, format!("format version {version}, this build reads version {FORMAT_VERSION}")));
        }
        let h = Header {
            width: u32_at(12),
            count: u64_at(16),
            vocab: u64_at(24),
            tokenizer_id: u64_at(32),
            source_key: u64_at(40),
            checksum: u64_at(48),
            docs: u64_at(56),
        };
        if h.width != width_for(h.vocab) {
            return Err(corrupt(
                path,
                format!("{} bytes per token for a vocabulary of {} (expected {})", h.width, h.vocab, width_for(h.vocab)),
            ));
        }
        Ok(h)
    }
}

/// Bytes per token for a vocabulary: `u16` while every id fits.
fn width_for(vocab: u64) -> u32 {
    if vocab <= 1 << 16 {
        2
    } else {
        4
    }
}

/// A token file, memory-mapped and checked.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    map: memmap2::Mmap,
    header: Header,
}

impl TokenFile {
    /// Maps `path` and checks it whole: magic, version, token width, length against the count
    /// (a truncated file says how many tokens are missing), the checksum, and every id against
    /// the vocabulary. The check reads the file once (a 5 MB corpus: milliseconds).
    ///
    /// # Errors
    /// [`TextError::Corrupt`] naming the file and the fault; [`Error::Io`].
    pub fn open(path: &Path) -> Result<Self> {
        // a FIFO or a device in the cache's place is refused, not mapped
        let (f, len) = crate::limits::open_regular(path, u64::MAX)?;
        if len < HEADER_LEN as u64 {
            return Err(corrupt(path, format!("{len} bytes, shorter than the {HEADER_LEN}-byte header")));
        }
        // SAFETY: the map is read-only. Token files are only ever replaced by rename (a new
        // inode; this map keeps the old one), never written in place; truncating one behind a
        // running process is outside the contract, as for any mapped file (safetensors, numpy).
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io("map", path, e))?;
        let header = Header::parse(path, &map)?;
        let w = header.width as u64;
        let want = header.count.checked_mul(w).and_then(|n| n.checked_add(HEADER_LEN as u64));
        if want != Some(len) {
            let have = (len - HEADER_LEN as u64) / w;
            return Err(corrupt(
                path,
                if want.is_some_and(|n| n > len) {
                    format!("truncated: the header counts {} tokens but the file holds {have} ({len} bytes)", header.count)
                } else {
                    format!("{len} bytes, but the header counts {} tokens of {w} bytes (+{HEADER_LEN})", header.count)
                },
            ));
        }
        let data = &map[HEADER_LEN..];
        let mut h = Fnv::new();
        h.write(data);
        if h.0 != header.checksum {
            return Err(corrupt(path, format!("checksum {} does not match the header's {}", hex(h.0), hex(header.checksum))));
        }
        let tf = TokenFile { path: path.to_path_buf(), map, header };
        if let Some(i) = (0..header.count).find(|&i| tf.get(i) as u64 >= header.vocab) {
            return Err(corrupt(path, format!("token {i} is id {}, outside the vocabulary of {}", tf.get(i), header.vocab)));
        }
        Ok(tf)
    }

    /// Like [`TokenFile::open`], and refuses a file made by another tokenizer.
    ///
    /// # Errors
    /// [`TextError::TokenizerMismatch`]; as [`TokenFile::open`].
    pub fn open_for(path: &Path, tokenizer_id: u64) -> Result<Self> {
        let tf = Self::open(path)?;
        if tf.header.tokenizer_id != tokenizer_id {
            return Err(text_err(TextError::TokenizerMismatch {
                path: path.display().to_string(),
                expected: hex(tokenizer_id),
                found: hex(tf.header.tokenizer_id),
            }));
        }
        Ok(tf)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens in the file.
    pub fn len(&self) -> u64 {
        self.header.count
    }

    /// Whether the file holds no token (never, for a file [`prepare`] wrote).
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Token `i` (`i < len()`; panics otherwise, like slice indexing).
    pub fn get(&self, i: u64) -> u32 {
        let w = self.header.width as usize;
        let o = HEADER_LEN + i as usize * w;
        let b = &self.map[o..o + w];
        if w == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// Tokens `start..start + out.len()` into `out`.
    pub fn read(&self, start: u64, out: &mut [u32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.get(start + j as u64);
        }
    }
}

/// A tokenised corpus ready to use.
#[derive(Debug)]
pub struct Prepared {
    /// The token file, opened.
    pub file: TokenFile,
    /// The source and its files.
    pub sources: Sources,
    /// True when the cached token file was reused, false when the text was tokenised now.
    pub reused: bool,
    /// Text files tokenised now (0 when reused).
    pub tokenised: usize,
    /// Files skipped as binary (0 when reused).
    pub skipped: usize,
}

/// Where [`prepare`] caches the tokens of `source` (canonical) under `tokenizer` in `dir`:
/// `tokens-<hash of both>.glatok`, so different sources or tokenizers never share a file.
pub fn cache_path(source: &Path, tokenizer: &CorpusTokenizer, dir: &Path) -> PathBuf {
    let mut h = Fnv::new();
    h.write(source.to_string_lossy().as_bytes());
    h.u64(tokenizer.id());
    dir.join(format!("tokens-{}.{TOKEN_FILE_EXT}", hex(h.0)))
}

/// Tokenises a text file or folder into a token file under `cache_dir` (created if needed), or
/// reuses the one there when the text (paths, sizes, mtimes) and the tokenizer are unchanged. A
/// cached file that fails its checks is rebuilt.
///
/// # Errors
/// [`TextError::Missing`], [`TextError::Empty`], [`TextError::Tokenizer`], [`Error::Io`].
pub fn prepare(source: &Path, tokenizer: &CorpusTokenizer, cache_dir: &Path) -> Result<Prepared> {
    let sources = list_sources(source)?;
    let path = cache_path(&sources.root, tokenizer, cache_dir);
    if let Ok(file) = TokenFile::open(&path) {
        let h = file.header;
        if h.source_key == sources.key && h.tokenizer_id == tokenizer.id() && h.vocab == tokenizer.vocab_size() as u64 {
            return Ok(Prepared { file, sources, reused: true, tokenised: 0, skipped: 0 });
        }
    }
    fs::create_dir_all(cache_dir).map_err(|e| Error::io("create dir", cache_dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = cache_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let built = write_tokens(&tmp, &sources, tokenizer);
    let (tokenised, skipped) = match built {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("rename", &path, e)
    })?;
    // best effort: makes the rename durable on POSIX file systems
    if let Ok(d) = fs::File::open(cache_dir) {
        let _ = d.sync_all();
    }
    let file = TokenFile::open(&path)?;
    Ok(Prepared { file, sources, reused: false, tokenised, skipped })
}

/// Streams the tokens of every text file into `tmp` (header last, once the count and checksum
/// are known) and syncs it. Returns (files tokenised, files skipped as binary).
fn write_tokens(tmp: &Path, src: &Sources, tok: &CorpusTokenizer) -> Result<(usize, usize)> {
    let vocab = tok.vocab_size() as u64;
    let width = width_for(vocab);
    let f = fs::File::create(tmp).map_err(|e| Error::io("create", tmp, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let werr = |e| Error::io("write", tmp, e);
    w.write_all(&[0u8; HEADER_LEN]).map_err(werr)?;
    let (mut count, mut docs, mut skipped) = (0u64, 0u64, 0usize);
    let mut hash = Fnv::new();
    let (mut ids, mut bytes) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; READ_CHUNK];
    let mut emit = |ids: &mut Vec<u32>, w: &mut std::io::BufWriter<fs::File>, count: &mut u64| -> Result<()> {
        bytes.clear();
        for &id in ids.iter() {
            if id as u64 >= vocab {
                return Err(text_err(TextError::Tokenizer { reason: format!("produced id {id}, outside its vocabulary of {vocab}") }));
            }
            if width == 2 {
                bytes.extend_from_slice(&(id as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
        }
        hash.write(&bytes);
        w.write_all(&bytes).map_err(werr)?;
        *count += ids.len() as u64;
        ids.clear();
        Ok(())
    };
    for file in &src.files {
        let mut f = fs::File::open(file).map_err(|e| Error::io("open", file, e))?;
        // `carry`: the tail of the last chunk after its last newline, encoded with the next one
        let (mut carry, mut first, mut any) = (Vec::<u8>::new(), true, false);
        loop {
            let n = read_full(&mut f, &mut buf).map_err(|e| Error::io("read", file, e))?;
            if first {
                first = false;
                if buf[..n.min(SNIFF_LEN)].contains(&0) {
                    skipped += 1;
                    break;
                }
            }
            let eof = n < buf.len();
            carry.extend_from_slice(&buf[..n]);
            let cut = if eof { carry.len() } else { carry.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) };
            if cut > 0 {
                tok.encode_piece(&carry[..cut], &mut ids).map_err(|e| match e {
                    Error::Text(TextError::Tokenizer { reason }) => {
                        text_err(TextError::Tokenizer { reason: format!("{}: {reason}", file.display()) })
                    }
                    e => e,
                })?;
                carry.drain(..cut);
                any |= !ids.is_empty();
                emit(&mut ids, &mut w, &mut count)?;
            }
            if eof {
                break;
            }
        }
        if any {
            docs += 1;
            if let Some(e) = tok.eos() {
                ids.push(e);
                emit(&mut ids, &mut w, &mut count)?;
            }
        }
    }
    if count == 0 {
        return Err(text_err(TextError::Empty { path: src.root.display().to_string(), files: src.files.len(), skipped }));
    }
    let header = Header { width, count, vocab, tokenizer_id: tok.id(), source_key: src.key, checksum: hash.0, docs };
    let mut f = w.into_inner().map_err(|e| Error::io("write", tmp, e.into_error()))?;
    f.seek(SeekFrom::Start(0)).map_err(werr)?;
    f.write_all(&header.to_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok((docs as usize, skipped))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A text corpus as a training run sees it (saved in the training state): where its tokens
/// are, which tokenizer made them, the window length and the validation split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextTask {
    /// The text file or folder (canonical), to re-tokenise if the token file goes missing.
    pub source: PathBuf,
    /// The `tokenizer.json` (None: byte-level).
    pub tokenizer: Option<PathBuf>,
    /// [`CorpusTokenizer::id`] as 16 hex digits.
    pub tokenizer_id: String,
    /// The token file.
    pub tokens: PathBuf,
    /// Checksum of the token data as 16 hex digits: a resumed run refuses other tokens.
    pub checksum: String,
    /// Tokens in the corpus.
    pub count: u64,
    /// Vocabulary size of the tokenizer.
    pub vocab: usize,
    /// Window length T: the model reads T tokens and predicts the T next ones.
    pub seq_len: usize,
    /// Tokens held out at the end of the corpus for evaluation.
    pub val_tokens: u64,
}

impl TextTask {
    /// The task for a prepared corpus: windows of `seq_len + 1` tokens; the last
    /// `max(val_fraction * count, seq_len + 1)` tokens held out for validation.
    ///
    /// # Errors
    /// [`Error::BadArg`] for `seq_len == 0` or a fraction outside `[0, 0.5]`;
    /// [`TextError::TooShort`] when the corpus cannot fill one window of each split.
    pub fn new(prepared: &Prepared, tokenizer: &CorpusTokenizer, seq_len: usize, val_fraction: f64) -> Result<Self> {
        if !(0.0..=0.5).contains(&val_fraction) {
            return Err(Error::BadArg { key: "val_fraction", reason: format!("must be in [0, 0.5], got {val_fraction}") });
        }
        let h = prepared.file.header();
        let val = ((h.count as f64 * val_fraction).round() as u64).max(seq_len as u64 + 1);
        let t = TextTask {
            source: prepared.sources.root.clone(),
            tokenizer: tokenizer.path().map(Path::to_path_buf),
            tokenizer_id: hex(h.tokenizer_id),
            tokens: prepared.file.path().to_path_buf(),
            checksum: hex(h.checksum),
            count: h.count,
            vocab: h.vocab as usize,
            seq_len,
            val_tokens: val,
        };
        t.validate()?;
        Ok(t)
    }

    /// The task as saved in the training state of `run`: a token file under the run directory is
    /// named relative to it, so the run can be resumed from any working directory and moved.
    pub fn relative_to(&self, run: &Path) -> Self {
        let mut t = self.clone();
        if let (Ok(tok), Ok(r)) = (std::fs::canonicalize(&self.tokens), std::fs::canonicalize(run)) {
            if let Ok(rel) = tok.strip_prefix(&r) {
                t.tokens = rel.to_path_buf();
            }
        }
        t
    }

    /// Undoes [`TextTask::relative_to`] for a run resumed from `run`: a relative token path is
    /// the run's (`run/<path>`), unless only the working directory holds it (states written
    /// before paths were saved relative to the run). A missing file is rebuilt under the run.
    pub fn resolve_under(&mut self, run: &Path) {
        if self.tokens.is_relative() {
            let in_run = run.join(&self.tokens);
            if in_run.is_file() || !self.tokens.is_file() {
                self.tokens = in_run;
            }
        }
    }

    /// Checks the window length and the split.
    ///
    /// # Errors
    /// [`Error::BadArg`] for `seq_len == 0`; [`TextError::TooShort`].
    pub fn validate(&self) -> Result<()> {
        if self.seq_len == 0 {
            return Err(Error::BadArg { key: "seq_len", reason: "must be > 0".into() });
        }
        let window = self.seq_len as u64 + 1;
        let val = self.val_tokens;
        if val < window {
            return Err(Error::BadArg { key: "val_tokens", reason: format!("{val} tokens cannot hold one validation window of {window}") });
        }
        if self.count < val.saturating_add(window) {
            return Err(text_err(TextError::TooShort {
                tokens: self.count,
                window: window as usize,
                val,
                need: val.saturating_add(window),
            }));
        }
        Ok(())
    }

    /// Checks that `tokenizer` is the one this task's tokens were made with.
    ///
    /// # Errors
    /// [`TextError::TokenizerMismatch`].
    pub fn check_tokenizer(&self, tokenizer: &CorpusTokenizer) -> Result<()> {
        if hex(tokenizer.id()) != self.tokenizer_id {
            return Err(text_err(TextError::TokenizerMismatch {
                path: self.tokens.display().to_string(),
                expected: hex(tokenizer.id()),
                found: self.tokenizer_id.clone(),
            }));
        }
        Ok(())
    }

    /// Opens the token file and checks that it holds the tokens this task was made with. When
    /// it is missing or damaged, the text is tokenised again into the same place (the tokens
    /// must then come out the same).
    ///
    /// # Errors
    /// [`TextError::Changed`] when the tokens differ from the run's; [`TextError::TokenizerMismatch`]
    /// when the tokenizer file changed; as [`TokenFile::open`] and [`prepare`].
    pub fn open(&self) -> Result<TextData> {
        self.validate()?;
        let id = u64::from_str_radix(&self.tokenizer_id, 16)
            .map_err(|_| Error::BadArg { key: "tokenizer_id", reason: format!("not 16 hex digits: {:?}", self.tokenizer_id) })?;
        let file = match TokenFile::open_for(&self.tokens, id) {
            Ok(f) => f,
            Err(e @ Error::Text(TextError::TokenizerMismatch { .. })) => return Err(e),
            Err(first) => {
                // a cache is allowed to vanish: rebuild it from the text with the same tokenizer
                let tok = CorpusTokenizer::load(self.tokenizer.as_deref())?;
                if tok.id() != id {
                    return Err(text_err(TextError::TokenizerMismatch {
                        path: self.tokenizer.as_deref().unwrap_or(Path::new("byte-level")).display().to_string(),
                        expected: self.tokenizer_id.clone(),
                        found: hex(tok.id()),
                    }));
                }
                let dir = self.tokens.parent().unwrap_or(Path::new("."));
                if !self.source.exists() {
                    return Err(first);
                }
                let p = prepare(&self.source, &tok, dir)?;
                if p.file.path() != self.tokens {
                    return Err(first);
                }
                p.file
            }
        };
        let found = hex(file.header().checksum);
        if found != self.checksum || file.len() != self.count {
            return Err(text_err(TextError::Changed { path: self.tokens.display().to_string(), expected: self.checksum.clone(), found }));
        }
        Ok(TextData { file, seq_len: self.seq_len, train_len: self.count - self.val_tokens, val_tokens: self.val_tokens })
    }
}

/// An opened corpus: samples training windows and walks the validation split.
#[derive(Debug)]
pub struct TextData {
    file: TokenFile,
    seq_len: usize,
    train_len: u64,
    val_tokens: u64,
}

impl TextData {
    /// The token file.
    pub fn file(&self) -> &TokenFile {
        &self.file
    }

    /// Window length T.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tokens of the training part (the first ones).
    pub fn train_tokens(&self) -> u64 {
        self.train_len
    }

    /// Tokens of the validation part (the last ones).
    pub fn val_tokens(&self) -> u64 {
        self.val_tokens
    }

    /// Start of training window `index` of stream `seed`: uniform over the offsets whose
    /// `T + 1` tokens lie inside the training part. Depends on `(seed, index)` only.
    pub fn window_start(&self, seed: u64, index: u64) -> u64 {
        let starts = self.train_len - self.seq_len as u64;
        let mut rng = Rng::for_item(seed, index);
        // multiply-shift on 128 bits: unbiased enough and exact for corpora beyond 2^32 tokens
        ((rng.next_u64() as u128 * starts as u128) >> 64) as u64
    }

    /// Fills one row: inputs `w[..T]`, targets `w[1..]` of the window at `start`.
    fn fill(&self, start: u64, ids: &mut [u32], targets: &mut [i64]) {
        let mut prev = self.file.get(start);
        for j in 0..self.seq_len {
            let next = self.file.get(start + j as u64 + 1);
            ids[j] = prev;
            targets[j] = next as i64;
            prev = next;
        }
    }

    /// Training windows `cursor..cursor + b` into `ids [b, T]` and aligned `targets [b, T]`
    /// (the cursor is the index of the next window, as for [`crate::Mqar::batch`]).
    pub fn batch(&self, seed: u64, cursor: u64, b: usize, ids: &mut [u32], targets: &mut [i64]) {
        let t = self.seq_len;
        for i in 0..b {
            let s = self.window_start(seed, cursor + i as u64);
            self.fill(s, &mut ids[i * t..(i + 1) * t], &mut targets[i * t..(i + 1) * t]);
        }
    }

    /// Validation windows used by an evaluation of at most `max` windows: consecutive,
    /// non-overlapping windows from the start of the validation part.
    pub fn eval_windows(&self, max: usize) -> usize {
        let avail = (self.val_tokens - 1) / self.seq_len as u64;
        (avail.min(max as u64) as usize).max(1)
    }

    /// Validation windows `first..min(first + b, n)` into rows of `ids [b, T]` and `targets`;
    /// rows past `n` get no label (ids 0, targets -100). Returns the rows filled.
    pub fn eval_batch(&self, first: usize, n: usize, b: usize, ids: &mut [u32], targets: &mut [i64]) -> usize {
        let t = self.seq_len;
        let rows = n.saturating_sub(first).min(b);
        for i in 0..b {
            let (ir, tr) = (&mut ids[i * t..(i + 1) * t], &mut targets[i * t..(i + 1) * t]);
            if i < rows {
                self.fill(self.train_len + ((first + i) * t) as u64, ir, tr);
            } else {
                ir.fill(0);
                tr.fill(IGNORE_INDEX);
            }
        }
        rows
    }
}

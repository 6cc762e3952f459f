//! Tokenizers: byte-level built in (token id = byte value, 0..=255), or a Hugging Face
//! `tokenizer.json` through the `tokenizers` crate (pure Rust, `fancy-regex`) with the cargo
//! feature `hf-tokenizer` (off by default: the crate and its dependencies take ~3.5 CPU-minutes
//! to build, more than the rest of this crate).
//!
//! ```
//! use gla_model::tokenizer::Tokenizer;
//! let t = Tokenizer::Bytes;
//! let ids = t.encode("hé").unwrap();
//! assert_eq!(ids, [104, 195, 169]);
//! assert_eq!(t.decode(&ids).unwrap(), "hé");
//! ```

use std::path::Path;

use crate::error::GenerateError;

/// The file name of a Hugging Face tokenizer inside a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A tokenizer.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// UTF-8 bytes: id `b` is byte `b` (vocabulary 256).
    Bytes,
    /// A Hugging Face `tokenizer.json` (feature `hf-tokenizer`).
    #[cfg(feature = "hf-tokenizer")]
    Hf(Box<tokenizers::Tokenizer>),
}

fn err(reason: impl Into<String>) -> GenerateError {
    GenerateError::Tokenizer { reason: reason.into() }
}

impl Tokenizer {
    /// `dir/tokenizer.json` when it exists, byte-level otherwise.
    ///
    /// # Errors
    /// [`GenerateError::Tokenizer`] when `tokenizer.json` exists but does not load.
    pub fn from_dir(dir: &Path) -> Result<Self, GenerateError> {
        let f = dir.join(TOKENIZER_FILE);
        if f.is_file() {
            Self::from_file(&f)
        } else {
            Ok(Self::Bytes)
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// # Errors
    /// [`GenerateError::Tokenizer`] naming the file; without the `hf-tokenizer` feature, always
    /// (saying so).
    pub fn from_file(path: &Path) -> Result<Self, GenerateError> {
        #[cfg(not(feature = "hf-tokenizer"))]
        return Err(err(format!(
            "{}: this build reads no tokenizer.json (rebuild with the cargo feature `hf-tokenizer`), or use the byte-level tokenizer",
            path.display()
        )));
        #[cfg(feature = "hf-tokenizer")]
        {
            // a regular file of bounded size only: a FIFO or a device would never end
            let bytes = crate::limits::read_regular(path, crate::limits::MAX_TEXT_FILE).map_err(|e| err(e.to_string()))?;
            // the tokenizers crate panics on some malformed JSON (found by tests/fuzz.rs): check
            // the syntax first, and turn a panic on what remains into an error
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| err(format!("{}: not valid JSON: {e}", path.display())))?;
            match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes)) {
                Ok(Ok(t)) => Ok(Self::Hf(Box::new(t))),
                Ok(Err(e)) => Err(err(format!("{}: {e}", path.display()))),
                Err(_) => Err(err(format!("{}: the tokenizers crate could not read this tokenizer.json", path.display()))),
            }
        }
    }

    /// A short description for logs: `byte-level` or `tokenizer.json (<vocab> tokens)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Bytes => "byte-level (256 tokens)".into(),
            #[cfg(feature = "hf-tokenizer")]
            Self::Hf(t) => format!("tokenizer.json ({} tokens)", t.get_vocab_size(true)),
        }
    }

    /// Number of ids the tokenizer can decode.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => 256,
            #[cfg(feature = "hf-tokenizer")]
            Self::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// Text to ids (with the tokenizer's special tokens, e.g. a BOS, as `tokenizer(text)` in
    /// Python).
    ///
    /// # Errors
    /// [`GenerateError::Tokenizer`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            #[cfg(feature = "hf-tokenizer")]
            Self::Hf(t) => t.encode(text, true).map(|e| e.get_ids().to_vec()).map_err(|e| err(format!("encode: {e}"))),
        }
    }

    /// Ids to text, skipping special tokens. Byte-level: invalid UTF-8 becomes U+FFFD.
    ///
    /// # Errors
    /// [`GenerateError::Tokenizer`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, GenerateError> {
        match self {
            Self::Bytes => {
                let bytes = ids
                    .iter()
                    .map(|&i| u8::try_from(i).map_err(|_| err(format!("id {i} is not a byte (byte-level vocabulary is 0..=255)"))))
                    .collect::<Result<Vec<u8>, _>>()?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            #[cfg(feature = "hf-tokenizer")]
            Self::Hf(t) => t.decode(ids, true).map_err(|e| err(format!("decode: {e}"))),
        }
    }
}

//! Typed errors of the model crate. Every variant carries what is needed to fix the call.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the model, its data, its optimiser or its checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config asks for a feature fla has and this crate does not build yet.
    #[error("config: {feature} is not supported yet ({detail})")]
    Unsupported {
        /// The config key or feature.
        feature: &'static str,
        /// The value found and what would be accepted.
        detail: String,
    },
    /// A config value is out of range or inconsistent with another one.
    #[error("config: `{key}` is invalid: {reason}")]
    BadConfig {
        /// The config key.
        key: &'static str,
        /// Why, with the numbers.
        reason: String,
    },
    /// A JSON document (config or training state) does not parse.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A buffer passed to the model has the wrong size.
    #[error("{op}: `{tensor}` should have {expected} elements ({shape}) but has {got}")]
    Shape {
        /// The function that checked.
        op: &'static str,
        /// The argument.
        tensor: &'static str,
        /// The expected shape, in words.
        shape: String,
        /// Expected element count.
        expected: usize,
        /// Actual element count.
        got: usize,
    },
    /// A token id is outside the vocabulary, or a label is neither a token nor the ignore index.
    #[error("{what} {value} at position {index} is outside the vocabulary [0, {vocab})")]
    Token {
        /// `input id` or `label`.
        what: &'static str,
        /// The offending value.
        value: i64,
        /// Its flat position.
        index: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A checkpoint tensor is missing, unexpected, or has the wrong shape or dtype.
    #[error("checkpoint {path}: tensor `{name}`: {reason}")]
    Tensor {
        /// The file.
        path: String,
        /// The tensor name.
        name: String,
        /// What is wrong (expected vs found shape or dtype).
        reason: String,
    },
    /// A safetensors file does not parse.
    #[error("checkpoint {path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A PyTorch `.pth` checkpoint (torch.save's zip of a pickled state dict) is malformed or
    /// holds something this reader does not take (vig's `pth`).
    #[error("checkpoint {path}: not a readable .pth state dict: {reason}")]
    Pth {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `rename`, ...).
        op: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An error of an op or a backend (shapes, gate values, an unsupported request).
    #[error(transparent)]
    Op(gla_core::Error),
    /// A training argument is out of range.
    #[error("training: `{key}` is invalid: {reason}")]
    BadArg {
        /// The argument.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The loss or the gradient became NaN or infinite.
    #[error("training diverged at step {step}: {what} is {value}")]
    Diverged {
        /// The step.
        step: u64,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// A text corpus or its token file (`gla train --data`) is missing, empty, too short,
    /// damaged, or made by another tokenizer.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The device running the math (a training [`crate::engine::Engine`], the GPU) failed; the
    /// message is the device's full error (kernel, grid, driver or cuBLAS status).
    #[error("device: {0}")]
    Device(String),
    /// A size computed from a file or a flag overflows or exceeds the memory budget
    /// ([`crate::limits::memory_budget`]); nothing was allocated.
    #[error("{what} needs {} bytes, more than the limit of {limit} bytes (the machine's memory; GLA_MEMORY_BUDGET sets another)", need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()))]
    TooLarge {
        /// What was to be allocated or read, with the sizes it came from.
        what: String,
        /// The bytes it needs (`None`: more than u64 holds).
        need: Option<u64>,
        /// The budget.
        limit: u64,
    },
    /// The training state does not match the run it is resumed into.
    #[error("resume: {reason}")]
    Resume {
        /// What differs.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { op, path: path.display().to_string(), source }
    }
}

/// Errors of generation: the model's, the tokenizer's and bad options.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The model failed (shapes, token ids, non-finite activations, checkpoint files).
    #[error(transparent)]
    Model(#[from] crate::Error),
    /// A generation or sampling option is out of range.
    #[error("generation option `{key}` is invalid: {reason}")]
    BadOption {
        /// The option.
        key: &'static str,
        /// Why, with the value.
        reason: String,
    },
    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// What went wrong.
        reason: String,
    },
    /// A prompt encodes to no token at all.
    #[error("prompt {index} is empty: it encodes to no token (a prompt needs at least one)")]
    EmptyPrompt {
        /// Its position in the batch.
        index: usize,
    },
}

/// What is wrong with a text corpus or its token file. Wrapped in [`Error::Text`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// The text file or folder does not exist.
    #[error("data: {path} does not exist (give a text file or a folder of text files)")]
    Missing {
        /// The path given.
        path: String,
    },
    /// The source holds no token: no file, only binary files, or only empty files.
    #[error("data: {path} holds no text ({files} files read, {skipped} skipped as binary): nothing to train on")]
    Empty {
        /// The source path.
        path: String,
        /// Files found.
        files: usize,
        /// Files skipped because they look binary.
        skipped: usize,
    },
    /// The corpus cannot fill one training window and one validation window.
    #[error(
        "data: the corpus has {tokens} tokens, too few for windows of T+1 = {window} tokens: it needs at least {need} \
         (one window to train on, {val} held out for validation); use a shorter --seq-len or more text"
    )]
    TooShort {
        /// Tokens in the corpus.
        tokens: u64,
        /// The window length T + 1.
        window: usize,
        /// Tokens held out for validation.
        val: u64,
        /// The least number of tokens that works.
        need: u64,
    },
    /// A token file is truncated or damaged.
    #[error("token file {path} is corrupt: {reason} (delete it to re-tokenise the text)")]
    Corrupt {
        /// The token file.
        path: String,
        /// What is wrong, with the numbers.
        reason: String,
    },
    /// A token file was made by another tokenizer than the one asked for.
    #[error("token file {path} was made by tokenizer {found}, but this run uses tokenizer {expected}")]
    TokenizerMismatch {
        /// The token file.
        path: String,
        /// The id of the tokenizer of this run (hex).
        expected: String,
        /// The id recorded in the file (hex).
        found: String,
    },
    /// The token file holds other tokens than the run was trained on (the text was re-tokenised
    /// after it changed).
    #[error(
        "token file {path} holds a different corpus (checksum {found}) than this run was trained on ({expected}): \
         the text changed and was re-tokenised; restore the text or start a new run"
    )]
    Changed {
        /// The token file.
        path: String,
        /// The checksum saved with the run (hex).
        expected: String,
        /// The checksum of the file now (hex).
        found: String,
    },
    /// The tokenizer failed to load or to encode a file.
    #[error("tokenizer: {reason}")]
    Tokenizer {
        /// What went wrong, with the file.
        reason: String,
    },
}

/// The contract's errors as this crate names them: a model-level shape, token or argument error
/// raised by the code written over the backend traits keeps its own variant here
/// ([`Error::Shape`], [`Error::Token`], [`Error::BadArg`]); the others are [`Error::Op`].
impl From<gla_core::Error> for Error {
    fn from(e: gla_core::Error) -> Self {
        match e {
            gla_core::Error::ShapeMismatch { op, tensor, expected, numel, got } => {
                Error::Shape { op, tensor, shape: expected, expected: numel, got }
            }
            gla_core::Error::Token { what, value, index, vocab } => Error::Token { what, value, index, vocab },
            gla_core::Error::BadArg { key, reason } => Error::BadArg { key, reason },
            e => Error::Op(e),
        }
    }
}

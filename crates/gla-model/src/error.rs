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
    /// An error of the GLA op (shapes, gate values).
    #[error(transparent)]
    Op(#[from] gla_core::Error),
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
    Text(#[from] crate::text::TextError),
    /// The device running the math (a training [`crate::train::Engine`], the GPU) failed; the
    /// message is the device's full error (kernel, grid, driver or cuBLAS status).
    #[error("device: {0}")]
    Device(String),
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

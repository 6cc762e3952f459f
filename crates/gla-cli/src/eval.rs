//! `gla eval`: a model's logits, loss and gradients on given token ids (safetensors in and out,
//! to compare with fla or any other implementation), or its loss, perplexity and bits per
//! token / byte over a text corpus in non-overlapping windows.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gla_model::layout::Layout;
use gla_model::model::{self as lm, Acts};
use gla_model::text::{self, CorpusTokenizer};
use gla_model::{shift_labels, GlaModel, LossOut};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::Serialize;

use crate::Device;

/// The input tensor `gla eval --input` reads.
pub const INPUT_IDS: &str = "input_ids";

/// `gla eval`'s flags: a model and either `--input`/`--output` or `--data`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").args(["input", "data"])))]
pub struct Args {
    /// Model directory (config.json + model.safetensors, or model.safetensors.index.json and its
    /// shards; tokenizer.json for --data when present), or a `gla train` run directory, which
    /// stands for its newest checkpoint. A vision model (`model_type` vig, `gla vision train`)
    /// is evaluated on its test set: test accuracy and loss (--data: the idx folder [default:
    /// Fashion-MNIST's]).
    #[arg(long)]
    model: PathBuf,
    /// Where the model runs: cpu (f32), or cuda (bf16 GEMM operands, f32 master weights,
    /// gradients and loss; a gla built with `--features cuda`).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// A safetensors file holding `input_ids`: token ids, i64 or i32, shape [B, T] with T >= 2.
    #[arg(long, value_name = "FILE.safetensors", requires = "output", conflicts_with = "data")]
    input: Option<PathBuf>,
    /// Where --input's results go (written atomically): `logits` f32 [B, T, vocab], `loss` f32
    /// `[1]` (mean cross-entropy with fla's label shift: position t predicts token t+1, the last
    /// position of each row has no target), and with --grads the gradients.
    #[arg(long, value_name = "FILE.safetensors", requires = "input")]
    output: Option<PathBuf>,
    /// Also write the gradient of the mean loss for every parameter: `grad.<fla name>`, f32, the
    /// parameter's shape (a tied lm_head's gradient is in the embedding's).
    #[arg(long, requires = "input")]
    grads: bool,
    /// Evaluate on this text file or folder (read recursively in path order, hidden and binary
    /// files skipped, tokenised as `gla train --data` does): loss, perplexity, bits per token and
    /// per byte over non-overlapping windows, each token predicted once.
    #[arg(long)]
    data: Option<PathBuf>,
    /// tokenizer.json for --data (a gla built with `--features hf-tokenizer`) [default: the
    /// model's own tokenizer.json, or the one its training run used; else byte-level].
    #[arg(long, requires = "data")]
    tokenizer: Option<PathBuf>,
    /// Tokenise --data byte-level even when the model has a tokenizer.json.
    #[arg(long, requires = "data", conflicts_with = "tokenizer")]
    byte_tokenizer: bool,
    /// Folder of the --data token file, reused while the text and the tokenizer are unchanged
    /// [default: gla-eval-data in the system's temporary folder].
    #[arg(long, requires = "data")]
    data_cache: Option<PathBuf>,
    /// Window length T of --data: the model reads T tokens and predicts the T next ones
    /// [default: the model's max_position_embeddings, or 2048; capped to the data].
    #[arg(long, requires = "data")]
    seq_len: Option<usize>,
    /// Windows per forward with --data (memory grows with it: the logits of a batch take
    /// batch x seq-len x vocab x 4 bytes).
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Evaluate only the first N windows of --data (0: all); of a vision model, the first N test
    /// images.
    #[arg(long, default_value_t = 0)]
    max_windows: usize,
    /// Print the --data results as one JSON object on stdout (the human summary goes to stderr).
    #[arg(long, requires = "data")]
    json: bool,
}

/// What is wrong with an `--input` file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The bytes are not a safetensors file.
    #[error("--input {path}: not a safetensors file: {reason}")]
    NotSafetensors {
        /// The file.
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// No `input_ids` tensor.
    #[error("--input {path}: no tensor `input_ids` (the file holds: {found})")]
    Missing {
        /// The file.
        path: String,
        /// The names it has.
        found: String,
    },
    /// `input_ids` is not an integer tensor of a supported width.
    #[error("--input {path}: `input_ids` is {dtype}; expected token ids as I64 or I32")]
    Dtype {
        /// The file.
        path: String,
        /// Its dtype.
        dtype: String,
    },
    /// `input_ids` is not `[B, T]` with B >= 1 and T >= 2.
    #[error("--input {path}: `input_ids` has shape {shape:?}; expected [B, T] with B >= 1 and T >= 2 (position t is scored on token t+1)")]
    Shape {
        /// The file.
        path: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// An id is negative or at least the vocabulary size.
    #[error("--input {path}: input_ids[{b}, {t}] = {value} is outside the model's vocabulary [0, {vocab})")]
    OutOfVocab {
        /// The file.
        path: String,
        /// Row.
        b: usize,
        /// Position.
        t: usize,
        /// The id.
        value: i64,
        /// The model's vocabulary size.
        vocab: usize,
    },
}

/// Token ids of a batch: `[B, T]` row-major.
#[derive(Debug)]
struct Batch {
    ids: Vec<u32>,
    b: usize,
    t: usize,
}

/// Reads and checks `input_ids` from safetensors `bytes` (from `path`) for a vocabulary of
/// `vocab`.
fn parse_input(bytes: &[u8], path: &Path, vocab: usize) -> Result<Batch, InputError> {
    let p = path.display().to_string();
    let st = SafeTensors::deserialize(bytes).map_err(|e| InputError::NotSafetensors { path: p.clone(), reason: e.to_string() })?;
    let t = st.tensor(INPUT_IDS).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        InputError::Missing { path: p.clone(), found: if names.is_empty() { "no tensor".into() } else { names.join(", ") } }
    })?;
    let shape = t.shape().to_vec();
    let width = match t.dtype() {
        Dtype::I64 => 8,
        Dtype::I32 => 4,
        d => return Err(InputError::Dtype { path: p, dtype: format!("{d:?}") }),
    };
    if shape.len() != 2 || shape[0] == 0 || shape[1] < 2 {
        return Err(InputError::Shape { path: p, shape });
    }
    let (b, tl) = (shape[0], shape[1]);
    let mut ids = Vec::with_capacity(b * tl);
    for (i, c) in t.data().chunks_exact(width).enumerate() {
        let v = match width {
            8 => i64::from_le_bytes(std::array::from_fn(|k| c[k])),
            _ => i64::from(i32::from_le_bytes(std::array::from_fn(|k| c[k]))),
        };
        if !(0..vocab as i64).contains(&v) {
            return Err(InputError::OutOfVocab { path: p, b: i / tl, t: i % tl, value: v, vocab });
        }
        ids.push(v as u32);
    }
    Ok(Batch { ids, b, t: tl })
}

/// What one `--input` evaluation produces.
struct Outputs {
    /// `[B*T, vocab]`
    logits: Vec<f32>,
    loss: LossOut,
    /// parameter table order
    grads: Option<Vec<f32>>,
}

/// fla's targets of a batch: each row's ids shifted left by one, the last position ignored.
fn targets(x: &Batch) -> Vec<i64> {
    shift_labels(&x.ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), x.t)
}

fn outputs_cpu(model: &GlaModel, x: &Batch, grads: bool) -> Result<Outputs> {
    let be = model.cpu();
    let mut acts = Acts::alloc(&be, &model.layout, x.b, x.t, false, x.b * x.t)?;
    let loss = lm::forward(&be, &model.layout, &mut acts, &x.ids, &targets(x))?;
    let grads = if grads {
        let mut g = vec![0.0f32; model.num_params()];
        lm::backward(&be, &model.layout, &mut acts, &mut g, 1.0)?;
        Some(g)
    } else {
        None
    };
    // the loss sends only the rows with a target through the lm_head; the body's output is
    // still there for the head on every row
    lm::head_logits(&be, &model.layout, &mut acts, None)?;
    let logits = acts.logits()[..x.b * x.t * model.dims.vocab].to_vec();
    Ok(Outputs { logits, loss, grads })
}

#[cfg(feature = "cuda")]
fn outputs_cuda(model: &GlaModel, x: &Batch, grads: bool) -> Result<Outputs> {
    let cuda = gla_cuda::Cuda::new().context("opening the GPU")?;
    let mut gm = gla_model::gpu::GpuModel::new(cuda, model)?;
    let mut acts = gm.activations(x.b, x.t)?;
    let loss = gm.forward(&mut acts, &x.ids, &targets(x))?;
    let grads = if grads {
        gm.backward(&mut acts, 1.0)?;
        Some(gm.grads_to_host()?)
    } else {
        None
    };
    // as on the CPU: the loss sent only the labelled rows through the lm_head; the body's output
    // is still there for the head on every row
    lm::head_logits(gm.weights().backend(), &gm.layout, &mut acts, None)?;
    let logits = gm.logits_to_host(&acts)?;
    Ok(Outputs { logits, loss, grads })
}

#[cfg(not(feature = "cuda"))]
fn outputs_cuda(_: &GlaModel, _: &Batch, _: bool) -> Result<Outputs> {
    bail!("this gla was built without the `cuda` feature: cargo build --release -p gla-cli --features cuda")
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The output file's bytes: `logits`, `loss` and the `grad.<name>` tensors.
fn serialize(x: &Batch, vocab: usize, out: &Outputs, layout: &Layout) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("logits".into(), vec![x.b, x.t, vocab], f32_bytes(&out.logits)),
        ("loss".into(), vec![1], f32_bytes(&[out.loss.loss as f32])),
    ];
    if let Some(g) = &out.grads {
        for s in &layout.specs {
            tensors.push((format!("grad.{}", s.name), s.shape.clone(), f32_bytes(&g[s.range()])));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, shape, b)| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .context("building the output tensors")?;
    let meta = [("format".to_string(), "pt".to_string())].into_iter().collect();
    safetensors::serialize(views, Some(meta)).context("serialising the output")
}

fn run_input(a: &Args, model: &GlaModel, input: &Path, output: &Path) -> Result<bool> {
    let (_, len) = gla_model::limits::open_regular(input, u64::MAX).with_context(|| format!("reading --input {}", input.display()))?;
    gla_model::limits::check_budget(format!("reading --input {}", input.display()), Some(len))?;
    let bytes = gla_model::limits::read_regular(input, len).with_context(|| format!("reading --input {}", input.display()))?;
    let x = parse_input(&bytes, input, model.dims.vocab)?;
    drop(bytes);
    let t0 = Instant::now();
    let out = match a.device {
        Device::Cpu => outputs_cpu(model, &x, a.grads)?,
        Device::Cuda => outputs_cuda(model, &x, a.grads)?,
    };
    let secs = t0.elapsed().as_secs_f64();
    let data = serialize(&x, model.dims.vocab, &out, &model.layout)?;
    gla_model::checkpoint::write_atomic(output, &data).with_context(|| format!("writing --output {}", output.display()))?;
    eprintln!(
        "eval: [{}, {}] tokens, loss {:.6} over {} targets, {} in {secs:.2} s -> {}",
        x.b,
        x.t,
        out.loss.loss,
        out.loss.n_valid,
        if a.grads { "logits and gradients" } else { "logits" },
        output.display()
    );
    Ok(true)
}

/// One forward's loss statistics on a `[B, T]` batch with aligned targets, through whichever
/// device holds the model; buffers are kept for the next batch of the same shape.
trait Scorer {
    fn score(&mut self, ids: &[u32], targets: &[i64], b: usize, t: usize) -> Result<LossOut>;
}

struct CpuScorer<'a> {
    model: &'a GlaModel,
    acts: Option<gla_model::Activations>,
}

impl Scorer for CpuScorer<'_> {
    fn score(&mut self, ids: &[u32], targets: &[i64], b: usize, t: usize) -> Result<LossOut> {
        let be = self.model.cpu();
        let acts = match &mut self.acts {
            Some(acts) if acts.shape() == (b, t) => acts,
            slot => slot.insert(Acts::alloc(&be, &self.model.layout, b, t, true, 0)?),
        };
        Ok(lm::forward(&be, &self.model.layout, acts, ids, targets)?)
    }
}

#[cfg(feature = "cuda")]
struct GpuScorer {
    model: gla_model::gpu::GpuModel,
    acts: Option<gla_model::gpu::GpuActivations>,
}

#[cfg(feature = "cuda")]
impl Scorer for GpuScorer {
    fn score(&mut self, ids: &[u32], targets: &[i64], b: usize, t: usize) -> Result<LossOut> {
        let acts = match &mut self.acts {
            Some(acts) if acts.shape() == (b, t) => acts,
            slot => {
                // free the old shape's buffers first
                *slot = None;
                slot.insert(self.model.activations(b, t)?)
            }
        };
        Ok(self.model.forward(acts, ids, targets)?)
    }
}

#[cfg(feature = "cuda")]
fn gpu_scorer(model: &GlaModel) -> Result<Box<dyn Scorer>> {
    let cuda = gla_cuda::Cuda::new().context("opening the GPU")?;
    Ok(Box::new(GpuScorer { model: gla_model::gpu::GpuModel::new(cuda, model)?, acts: None }))
}

#[cfg(not(feature = "cuda"))]
fn gpu_scorer(_: &GlaModel) -> Result<Box<dyn Scorer>> {
    bail!("this gla was built without the `cuda` feature: cargo build --release -p gla-cli --features cuda")
}

/// The `--data --json` line.
#[derive(Serialize)]
struct DataReport {
    model: String,
    data: String,
    tokenizer: String,
    device: &'static str,
    seq_len: usize,
    batch_size: usize,
    windows: usize,
    /// tokens predicted (each once)
    tokens: usize,
    /// mean cross-entropy, nats per token
    loss: f64,
    perplexity: f64,
    bits_per_token: f64,
    /// bits per byte of text: exact for byte-level tokens, else at the corpus's mean bytes
    /// per token
    bits_per_byte: f64,
    bytes_per_token: f64,
    /// next-token accuracy (argmax)
    accuracy: f64,
    seconds: f64,
    tokens_per_s: f64,
}

fn run_data(a: &Args, model: &GlaModel, dir: &Path, src: &Path) -> Result<bool> {
    let tok_file = if a.byte_tokenizer { None } else { a.tokenizer.clone().or_else(|| crate::model_dir::tokenizer_file(dir)) };
    let tok = CorpusTokenizer::load(tok_file.as_deref())?;
    if tok.vocab_size() > model.dims.vocab {
        bail!(
            "the tokenizer ({}) makes ids up to {}, beyond the model's vocabulary of {}: pass the model's own --tokenizer",
            tok.describe(),
            tok.vocab_size() - 1,
            model.dims.vocab
        );
    }
    let cache = a.data_cache.clone().unwrap_or_else(|| std::env::temp_dir().join("gla-eval-data"));
    let p = text::prepare(src, &tok, &cache).with_context(|| format!("preparing --data {}", src.display()))?;
    let n = p.file.len();
    if n < 2 {
        bail!("--data {} holds {n} token(s): scoring needs at least 2", src.display());
    }
    let preds = (n - 1) as usize; // every token but the first is predicted once
    let t = match a.seq_len {
        Some(0) => bail!("--seq-len must be at least 1"),
        Some(t) => t,
        None if model.config.max_position_embeddings() > 0 => model.config.max_position_embeddings(),
        None => 2048,
    }
    .min(preds);
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // full windows of T predictions, then the remainder as one shorter window
    let mut windows: Vec<(usize, usize)> = (0..preds / t).map(|i| (i * t, t)).collect();
    let rest = preds % t;
    if rest > 0 {
        windows.push((preds - rest, rest));
    }
    if a.max_windows > 0 {
        windows.truncate(a.max_windows);
    }
    let total: usize = windows.iter().map(|w| w.1).sum();
    let mut scorer: Box<dyn Scorer + '_> = match a.device {
        Device::Cpu => Box::new(CpuScorer { model, acts: None }),
        Device::Cuda => gpu_scorer(model)?,
    };
    let device = match a.device {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    };
    eprintln!(
        "eval: {} tokens of {} ({}); {} windows of {t} tokens{}, batch {}, {device}",
        n,
        p.sources.root.display(),
        tok.describe(),
        windows.len(),
        if windows.last().is_some_and(|w| w.1 < t) { " (the last shorter)" } else { "" },
        a.batch_size
    );
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let (mut nats, mut correct, mut scored, mut done) = (0.0f64, 0usize, 0usize, 0usize);
    let (mut ids, mut tg, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    while i < windows.len() {
        let len = windows[i].1;
        let b = windows[i..].iter().take(a.batch_size).take_while(|w| w.1 == len).count();
        ids.clear();
        tg.clear();
        for &(start, _) in &windows[i..i + b] {
            buf.resize(len + 1, 0);
            p.file.read(start as u64, &mut buf);
            ids.extend_from_slice(&buf[..len]);
            tg.extend(buf[1..].iter().map(|&x| i64::from(x)));
        }
        let out = scorer.score(&ids, &tg, b, len)?;
        if !out.loss.is_finite() {
            bail!("the loss of windows {i}..{} is {}: the model's activations overflowed", i + b, out.loss);
        }
        nats += out.loss * out.n_valid as f64;
        correct += out.correct;
        scored += out.n_valid;
        done += b;
        i += b;
        if tty {
            let el = t0.elapsed().as_secs_f64();
            eprint!(
                "\r\x1b[2Keval {done}/{} windows  {scored}/{total} tokens  loss {:.4}  {:.0} tok/s",
                windows.len(),
                nats / scored as f64,
                scored as f64 / el
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let secs = t0.elapsed().as_secs_f64();
    let loss = nats / scored.max(1) as f64;
    let bits_per_token = loss / std::f64::consts::LN_2;
    // byte-level: one byte per token; otherwise the corpus's mean (its text bytes over its tokens)
    let bytes_per_token = if tok.path().is_none() { 1.0 } else { p.sources.bytes as f64 / n as f64 };
    let r = DataReport {
        model: dir.display().to_string(),
        data: p.sources.root.display().to_string(),
        tokenizer: tok.describe(),
        device,
        seq_len: t,
        batch_size: a.batch_size,
        windows: windows.len(),
        tokens: scored,
        loss,
        perplexity: loss.exp(),
        bits_per_token,
        bits_per_byte: bits_per_token / bytes_per_token,
        bytes_per_token,
        accuracy: correct as f64 / scored.max(1) as f64,
        seconds: secs,
        tokens_per_s: scored as f64 / secs,
    };
    let summary = format!(
        "loss {:.4} nats/token, perplexity {:.3}, {:.4} bits/token, {:.4} bits/byte{}, next-token accuracy {:.2}% over {} tokens ({:.1} s, {:.0} tokens/s)",
        r.loss,
        r.perplexity,
        r.bits_per_token,
        r.bits_per_byte,
        if tok.path().is_none() { String::new() } else { format!(" (at {:.2} bytes/token)", r.bytes_per_token) },
        100.0 * r.accuracy,
        r.tokens,
        r.seconds,
        r.tokens_per_s
    );
    if a.json {
        eprintln!("{summary}");
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{summary}");
    }
    Ok(true)
}

/// Runs `gla eval`.
///
/// # Errors
/// A model that does not load, a bad input file or corpus ([`InputError`], text errors), device
/// errors, an unwritable output.
pub fn run(a: &Args) -> Result<bool> {
    a.device.ensure_built()?;
    if crate::vision::is_vision_dir(&a.model) {
        if a.input.is_some() || a.device != crate::Device::Cpu {
            bail!("a vision model is evaluated on its test set on the CPU: give --model DIR [--data IDX_DIR]");
        }
        let data = a.data.clone().unwrap_or_else(|| PathBuf::from(crate::vision::FASHION_MNIST));
        crate::vision::eval(&a.model, &data, a.max_windows, a.json)?;
        return Ok(true);
    }
    if a.input.is_none() && a.data.is_none() {
        // a usage error, as clap reports a missing required flag (status 2)
        clap::Error::raw(
            clap::error::ErrorKind::MissingRequiredArgument,
            "a language model is evaluated on --input FILE --output FILE, or on --data PATH\n",
        )
        .exit();
    }
    let (model, dir) = crate::model_dir::load(&a.model)?;
    match (&a.input, &a.output, &a.data) {
        (Some(i), Some(o), _) => run_input(a, &model, i, o),
        (_, _, Some(d)) => run_data(a, &model, &dir, d),
        _ => bail!("give --input FILE --output FILE, or --data PATH"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Vec<u8> {
        let v = TensorView::new(dtype, shape, data).unwrap();
        safetensors::serialize([(name.to_string(), v)], None).unwrap()
    }

    #[test]
    fn input_ids_are_checked() {
        let p = Path::new("in.safetensors");
        let i32s: Vec<u8> = [1i32, 2, 3, 4].iter().flat_map(|x| x.to_le_bytes()).collect();
        let x = parse_input(&file("input_ids", Dtype::I32, vec![2, 2], &i32s), p, 8).unwrap();
        assert_eq!((x.ids, x.b, x.t), (vec![1, 2, 3, 4], 2, 2));
        let i64s: Vec<u8> = [1i64, -1, 3].iter().flat_map(|x| x.to_le_bytes()).collect();
        let e = parse_input(&file("input_ids", Dtype::I64, vec![1, 3], &i64s), p, 8).unwrap_err().to_string();
        assert!(e.contains("input_ids[0, 1] = -1") && e.contains("[0, 8)"), "{e}");
        let e = parse_input(&file("input_ids", Dtype::I64, vec![3, 1], &i64s), p, 8).unwrap_err().to_string();
        assert!(e.contains("[3, 1]") && e.contains("T >= 2"), "{e}");
        let e = parse_input(&file("ids", Dtype::I64, vec![1, 3], &i64s), p, 8).unwrap_err().to_string();
        assert!(e.contains("no tensor `input_ids`") && e.contains("ids"), "{e}");
        let e = parse_input(&file("input_ids", Dtype::F32, vec![1, 3], &[0; 12]), p, 8).unwrap_err().to_string();
        assert!(e.contains("F32") && e.contains("I64 or I32"), "{e}");
        let e = parse_input(b"not a file", p, 8).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }
}

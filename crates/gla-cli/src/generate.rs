//! `gla generate`: text from a local Hugging Face directory (fla's format: GLA, DeltaNet or Gated
//! DeltaNet, by `model_type`) on the CPU, and
//! `gla bench generate`: tokens/s and time to first token of a random model.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gla_model::generate::{generate_ids, Decoder, GenerateOptions, Generation};
use gla_model::sample::{Sampler, SamplingParams};
use gla_model::tokenizer::Tokenizer;
use gla_model::{GlaConfig, GlaModel, Rng};
use serde::Serialize;

use crate::Device;

/// Sampling flags shared by `generate` and `bench generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Hugging Face repetition penalty on every token of the context (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Model directory: config.json + model.safetensors (or model.safetensors.index.json and its
    /// shards), and tokenizer.json when the model has one (byte-level otherwise; reading
    /// tokenizer.json needs a gla built with `--features hf-tokenizer`); or a `gla train` run
    /// directory, which stands for its newest checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Where the model runs: cpu (f32), or cuda (bf16 weights, f32 states; a gla built with
    /// `--features cuda`).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// The prompt. Without --prompt, --prompt-file, --prompts-file or --prompt-ids, the prompt is
    /// read from stdin.
    #[arg(long, conflicts_with_all = ["prompt_file", "prompts_file", "prompt_ids"])]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated (e.g. `1,2,3`), bypassing the tokenizer; repeat
    /// the flag for a batch (one prompt each).
    #[arg(long, value_name = "IDS", conflicts_with_all = ["prompt_file", "prompts_file"])]
    prompt_ids: Vec<String>,
    /// Print the generated token ids instead of the text: comma-separated, one line per prompt
    /// (an end-of-sequence id that stopped a sequence included).
    #[arg(long)]
    print_ids: bool,
    /// Read the prompt from this file (all of it, newlines included).
    #[arg(long, conflicts_with_all = ["prompts_file", "prompt_ids"])]
    prompt_file: Option<PathBuf>,
    /// One prompt per line (empty lines skipped), generated as one batch; prints one JSON object
    /// per prompt, in order: {"index", "prompt", "text", "tokens", "stop"}.
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// The most tokens generated per prompt.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Prompts generated together (--prompts-file, several --prompt-ids): memory grows with it
    /// (one decode state per prompt), so a long file runs in batches of this many, each
    /// printed when it is done.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch_size: u64,
    /// Stop when the text contains this string (repeatable; `\n`, `\t` and `\\` are read as
    /// escapes); the text ends before it.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Do not stop at the config's eos_token_id.
    #[arg(long)]
    ignore_eos: bool,
    /// Use the byte-level tokenizer even when the directory has a tokenizer.json.
    #[arg(long)]
    byte_tokenizer: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print timings (load, time to first token, tokens/s) to stderr.
    #[arg(long)]
    stats: bool,
}

/// `\n`, `\t`, `\r` and `\\` as the characters (so `--stop "\n\n"` works from a shell).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[derive(Serialize)]
struct Line<'a> {
    index: usize,
    prompt: &'a str,
    text: &'a str,
    tokens: usize,
    stop: &'static str,
}

#[cfg(feature = "cuda")]
fn generate_cuda(
    model: &GlaModel,
    tok: &Tokenizer,
    ids: &[Vec<u32>],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    let dec = gla_model::gpu::GpuDecoder::new(gla_cuda::Cuda::new()?, model)?;
    Ok(generate_ids(&dec, tok, ids, opts, on_text)?)
}

#[cfg(not(feature = "cuda"))]
fn generate_cuda(
    _: &GlaModel,
    _: &Tokenizer,
    _: &[Vec<u32>],
    _: &GenerateOptions,
    _: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    bail!("this gla was built without the `cuda` feature: cargo build --release -p gla-cli --features cuda")
}

/// A `--prompt-ids` value that is no prompt of this model.
#[derive(Debug, thiserror::Error)]
pub enum PromptIdsError {
    /// A piece between commas is not a non-negative integer.
    #[error("--prompt-ids (prompt {prompt}): `{text}` is not a token id (expected comma-separated integers such as 1,2,3)")]
    NotAnId {
        /// The prompt's index (the flag's occurrence, from 0).
        prompt: usize,
        /// The piece as given.
        text: String,
    },
    /// An id at or above the model's vocabulary size.
    #[error("--prompt-ids (prompt {prompt}): token id {id} at position {position} is outside the model's vocabulary of {vocab} tokens (ids 0..={max})", max = vocab - 1)]
    OutOfVocab {
        /// The prompt's index.
        prompt: usize,
        /// The id's position in the prompt.
        position: usize,
        /// The id.
        id: u64,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// No id at all.
    #[error("--prompt-ids (prompt {prompt}) is empty: a prompt needs at least one token id")]
    Empty {
        /// The prompt's index.
        prompt: usize,
    },
}

/// Parses `--prompt-ids` values (`"1,2,3"`, one per prompt) against a vocabulary of `vocab`.
///
/// # Errors
/// [`PromptIdsError`] naming the prompt, the bad piece or id and the vocabulary size.
pub fn parse_prompt_ids(values: &[String], vocab: usize) -> Result<Vec<Vec<u32>>, PromptIdsError> {
    values
        .iter()
        .enumerate()
        .map(|(prompt, v)| {
            if v.trim().is_empty() {
                return Err(PromptIdsError::Empty { prompt });
            }
            v.split(',')
                .enumerate()
                .map(|(position, piece)| {
                    let text = piece.trim();
                    let id: u64 = text.parse().map_err(|_| PromptIdsError::NotAnId { prompt, text: text.to_string() })?;
                    if id >= vocab as u64 {
                        return Err(PromptIdsError::OutOfVocab { prompt, position, id, vocab });
                    }
                    Ok(id as u32)
                })
                .collect()
        })
        .collect()
}

pub fn run(a: &Args) -> Result<bool> {
    a.device.ensure_built()?;
    let t0 = Instant::now();
    let (model, dir) = crate::model_dir::load(&a.model)?;
    let tok = crate::model_dir::tokenizer(&dir, a.byte_tokenizer)?;
    let load_s = t0.elapsed().as_secs_f64();
    if a.stats {
        eprintln!(
            "loaded {} ({} parameters, {} layers) in {load_s:.2} s; tokenizer: {}; state per sequence: {:.1} KiB{}",
            dir.display(),
            model.num_params(),
            model.dims.layers,
            tok.describe(),
            model.new_state().bytes() as f64 / 1024.0,
            kv_note(&model.dims)
        );
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: a.sampling.params(),
        stop_strings: a.stop.iter().map(|s| unescape(s)).collect(),
        eos: if a.ignore_eos { Vec::new() } else { GenerateOptions::eos_from_config(&model) },
    };
    let (prompts, ids): (Vec<String>, Vec<Vec<u32>>) = if !a.prompt_ids.is_empty() {
        (a.prompt_ids.clone(), parse_prompt_ids(&a.prompt_ids, model.dims.vocab)?)
    } else {
        let prompts: Vec<String> = if let Some(f) = &a.prompts_file {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let v: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
            if v.is_empty() {
                bail!("{} holds no prompt (one per line)", f.display());
            }
            v
        } else if let Some(p) = &a.prompt {
            vec![p.clone()]
        } else if let Some(f) = &a.prompt_file {
            vec![std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?]
        } else {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the prompt from stdin")?;
            vec![s]
        };
        let ids = prompts.iter().map(|p| tok.encode(p)).collect::<Result<Vec<_>, _>>()?;
        (prompts, ids)
    };
    // several prompts give one JSON line each; ids are printed once generation is done
    let batch = a.prompts_file.is_some() || a.prompt_ids.len() > 1;
    let stream = !batch && !a.print_ids;
    let stdout = std::io::stdout();
    let t1 = Instant::now();
    let mut first: Option<f64> = None;
    // every write is checked: a closed pipe or a full disk ends the output and the command
    // fails (crate::out), never silently
    let write = |s: &str| -> Result<()> {
        let mut out = stdout.lock();
        out.write_all(s.as_bytes()).and_then(|()| out.flush()).map_err(|e| {
            crate::out::fail(&e);
            anyhow::anyhow!("writing to stdout: {e} (the output is incomplete)")
        })
    };
    let mut on_text = |_i: usize, s: &str| {
        first.get_or_insert_with(|| t1.elapsed().as_secs_f64());
        if stream && !crate::out::failed() {
            let _ = write(s);
        }
    };
    let mut gens: Vec<Generation> = Vec::new();
    let per_batch = usize::try_from(a.batch_size).unwrap_or(usize::MAX);
    for (chunk, ids) in ids.chunks(per_batch).enumerate() {
        let done: Vec<Generation> = match a.device {
            Device::Cpu => generate_ids(&model, &tok, ids, &opts, &mut on_text)?,
            Device::Cuda => generate_cuda(&model, &tok, ids, &opts, &mut on_text)?,
        };
        if crate::out::failed() {
            break;
        }
        let first_index = chunk * per_batch;
        let mut text = String::new();
        if a.print_ids {
            for g in &done {
                let line: Vec<String> = g.tokens.iter().map(u32::to_string).collect();
                text.push_str(&line.join(","));
                text.push('\n');
            }
        } else if batch {
            for (k, g) in done.iter().enumerate() {
                let i = first_index + k;
                let line = Line { index: i, prompt: &prompts[i], text: &g.text, tokens: g.tokens.len(), stop: g.stop.as_str() };
                text.push_str(&serde_json::to_string(&line)?);
                text.push('\n');
            }
        } else {
            text.push('\n');
        }
        write(&text)?;
        // only the counts are kept for --stats: the texts are out
        gens.extend(done.into_iter().map(|g| Generation { text: String::new(), ..g }));
    }
    crate::out::finish()?;
    let secs = t1.elapsed().as_secs_f64();
    if a.stats {
        let n: usize = gens.iter().map(|g| g.tokens.len()).sum();
        let prompt_tokens: usize = gens.iter().map(|g| g.prompt_tokens.len()).sum();
        eprintln!(
            "{} prompt(s), {prompt_tokens} prompt tokens, {n} generated in {secs:.2} s ({:.1} tokens/s); first text after {:.0} ms; stop: {}",
            gens.len(),
            n as f64 / secs,
            first.unwrap_or(secs) * 1e3,
            gens.iter().map(|g| g.stop.as_str()).collect::<Vec<_>>().join(",")
        );
    }
    Ok(true)
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Device to time on.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// A model directory to time; without it, a random model of the config below.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Config of the random model: JSON text or the path of a config.json (fla's config keys;
    /// `model_type` picks the family); default: fla's gla_340M (hidden 1024, 24 layers, 4 heads, tied embeddings, vocab 32000).
    #[arg(long)]
    config: Option<String>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// Batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch: Vec<usize>,
    /// Also measure the peak memory of one sequence at these context lengths (comma-separated,
    /// e.g. 1024,65536): prefill that many tokens, then decode 16. CPU: the process's resident
    /// set; cuda: the GPU memory pool's high-water mark.
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct MemEntry {
    context: usize,
    prefill_s: f64,
    decode_ms_per_token: f64,
    /// peak memory during this run (after resetting the peak), MiB: see `peak_of`
    peak_mib: f64,
    /// what `peak_mib` measures: the process's resident set (CPU) or the GPU memory pool's
    /// high-water mark (every device allocation of the process, weights included)
    peak_of: &'static str,
    state_bytes: usize,
}

/// A hybrid stack's KV caches in the `--stats` line: what they add per token seen (their
/// full-attention layers) and at most (their windowed layers); empty for a recurrent model.
fn kv_note(dims: &gla_model::Dims) -> String {
    use gla_model::infer::kv_cache_bytes;
    let (at0, at1) = (kv_cache_bytes(dims, 0), kv_cache_bytes(dims, 1));
    if at1 == 0 {
        return String::new();
    }
    let mut s = String::from(" + KV caches of the attention layers:");
    if at1 > at0 {
        s += &format!(" {:.2} KiB per token seen", (at1 - at0) as f64 / 1024.0);
    }
    if at0 > 0 {
        s += &format!(" {:.1} KiB for the windowed layers", at0 as f64 / 1024.0);
    }
    s
}

/// Peak resident set (VmHWM) in KiB, from /proc (Linux).
fn peak_rss_kib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Serialize)]
struct BenchEntry {
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    /// prefill of the whole batch plus the first sampled token, ms
    ttft_ms: f64,
    prefill_tokens_per_s: f64,
    /// generated tokens per second over the decode phase, all sequences together
    decode_tokens_per_s: f64,
    /// ms per decode step (one token for every sequence)
    ms_per_step: f64,
    state_bytes_per_seq: usize,
}

#[derive(Serialize)]
struct BenchReport {
    unix_time: u64,
    device: String,
    threads: usize,
    config: serde_json::Value,
    params: usize,
    results: Vec<BenchEntry>,
    memory: Vec<MemEntry>,
}

pub fn bench(a: &BenchArgs) -> Result<bool> {
    a.device.ensure_built()?;
    if a.prompt_len == 0 || a.new_tokens == 0 || a.batch.contains(&0) {
        bail!("--prompt-len, --new-tokens and every --batch must be > 0");
    }
    let model = match (&a.model, &a.config) {
        (Some(dir), _) => crate::model_dir::load(dir)?.0,
        (None, c) => {
            let config = match c {
                Some(arg) => crate::bench_train::config_arg(arg)?,
                None => {
                    GlaConfig { hidden_size: 1024, num_hidden_layers: 24, num_heads: 4, tie_word_embeddings: true, ..GlaConfig::default() }
                        .into()
                }
            };
            GlaModel::new(config, 0)?
        }
    };
    let threads = rayon::current_num_threads();
    println!(
        "gla bench generate: {}, {} parameters ({} layers, hidden {}, {}, vocab {}), greedy",
        match a.device {
            Device::Cpu => format!("cpu ({threads} threads), f32"),
            Device::Cuda => "cuda".to_string(),
        },
        model.num_params(),
        model.dims.layers,
        model.dims.d,
        gla_model::config::describe_mixers(&model.dims),
        model.dims.vocab
    );
    println!(
        "{:>5} {:>7} {:>5} {:>10} {:>14} {:>14} {:>10} {:>12}",
        "batch", "prompt", "new", "TTFT ms", "prefill tok/s", "decode tok/s", "ms/step", "state/seq"
    );
    let vocab = model.dims.vocab;
    let results = match a.device {
        Device::Cpu => bench_batches(a, &model, vocab, |st: &gla_model::infer::State| st.bytes())?,
        Device::Cuda if a.batch.is_empty() => Vec::new(),
        Device::Cuda => bench_cuda(a, &model)?,
    };
    let memory = match a.device {
        Device::Cpu => bench_contexts(
            a,
            &model,
            vocab,
            |st: &gla_model::infer::State| st.bytes(),
            &|| {
                // reset the peak resident set to the current one (Linux >= 4.0)
                let _ = std::fs::write("/proc/self/clear_refs", "5");
            },
            &|| peak_rss_kib().unwrap_or(f64::NAN) / 1024.0,
            "peak resident set of the process (VmHWM)",
        )?,
        Device::Cuda => memory_cuda(a, &model)?,
    };
    if let Some(path) = &a.json {
        let report = BenchReport {
            unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            device: match a.device {
                Device::Cpu => "cpu".into(),
                Device::Cuda => "cuda".into(),
            },
            threads,
            config: serde_json::from_str(&model.config.to_json())?,
            params: model.num_params(),
            results,
            memory,
        };
        gla_core::io::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(true)
}

/// Peak memory of one sequence at each `--contexts` length, on any [`Decoder`]: `reset` the
/// peak, prefill that many random tokens, decode 16, read the peak with `peak_mib`.
fn bench_contexts<D: Decoder>(
    a: &BenchArgs,
    dec: &D,
    vocab: usize,
    state_bytes: impl Fn(&D::State) -> usize,
    reset: &dyn Fn(),
    peak_mib: &dyn Fn() -> f64,
    peak_of: &'static str,
) -> Result<Vec<MemEntry>> {
    let mut memory = Vec::new();
    for &c in &a.contexts {
        reset();
        let mut r = Rng::new(7);
        let ids: Vec<u32> = (0..c.max(1)).map(|_| r.below(vocab) as u32).collect();
        let mut st = dec.new_state()?;
        let t0 = Instant::now();
        let mut l = dec.prefill_batch(&[&ids], &mut [&mut st])?.remove(0);
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut s = Sampler::new(SamplingParams::default())?;
        let t1 = Instant::now();
        for _ in 0..16 {
            let tok = s.sample(&l, &[]);
            l = dec.decode_batch(&[tok], &mut [&mut st])?.remove(0);
        }
        let e = MemEntry {
            context: c,
            prefill_s,
            decode_ms_per_token: t1.elapsed().as_secs_f64() * 1e3 / 16.0,
            peak_mib: peak_mib(),
            peak_of,
            state_bytes: state_bytes(&st),
        };
        println!(
            "context {:>7}: prefill {:.2} s, decode {:.2} ms/token, peak {:.1} MiB ({peak_of}), state {:.1} KiB",
            c,
            e.prefill_s,
            e.decode_ms_per_token,
            e.peak_mib,
            e.state_bytes as f64 / 1024.0
        );
        memory.push(e);
    }
    Ok(memory)
}

/// Time to first token and decode tokens/s of greedy generation at each `--batch` size, on any
/// [`Decoder`] (the CPU model, the GPU).
fn bench_batches<D: Decoder>(a: &BenchArgs, dec: &D, vocab: usize, state_bytes: impl Fn(&D::State) -> usize) -> Result<Vec<BenchEntry>> {
    let mut results = Vec::new();
    for &b in &a.batch {
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|i| {
                let mut r = Rng::new(1000 + i as u64);
                (0..a.prompt_len).map(|_| r.below(vocab) as u32).collect()
            })
            .collect();
        let mut states: Vec<D::State> = (0..b).map(|_| dec.new_state()).collect::<Result<_, _>>()?;
        let mut samplers: Vec<Sampler> = (0..b).map(|_| Sampler::new(SamplingParams::default())).collect::<Result<_, _>>()?;
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let t0 = Instant::now();
        let mut sts: Vec<_> = states.iter_mut().collect();
        let logits = dec.prefill_batch(&refs, &mut sts)?;
        let mut ids: Vec<u32> = logits.iter().zip(samplers.iter_mut()).map(|(l, s)| s.sample(l, &[])).collect();
        let ttft = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 1..a.new_tokens {
            let logits = dec.decode_batch(&ids, &mut sts)?;
            ids = logits.iter().zip(samplers.iter_mut()).map(|(l, s)| s.sample(l, &[])).collect();
        }
        let dec = t1.elapsed().as_secs_f64();
        let steps = (a.new_tokens - 1).max(1);
        let e = BenchEntry {
            batch: b,
            prompt_len: a.prompt_len,
            new_tokens: a.new_tokens,
            ttft_ms: ttft * 1e3,
            prefill_tokens_per_s: (b * a.prompt_len) as f64 / ttft,
            decode_tokens_per_s: if a.new_tokens > 1 { (b * (a.new_tokens - 1)) as f64 / dec } else { 0.0 },
            ms_per_step: dec * 1e3 / steps as f64,
            state_bytes_per_seq: state_bytes(&states[0]),
        };
        println!(
            "{:>5} {:>7} {:>5} {:>10.1} {:>14.1} {:>14.1} {:>10.2} {:>9.1} KiB",
            b,
            a.prompt_len,
            a.new_tokens,
            e.ttft_ms,
            e.prefill_tokens_per_s,
            e.decode_tokens_per_s,
            e.ms_per_step,
            e.state_bytes_per_seq as f64 / 1024.0
        );
        results.push(e);
    }
    Ok(results)
}

#[cfg(feature = "cuda")]
fn bench_cuda(a: &BenchArgs, model: &GlaModel) -> Result<Vec<BenchEntry>> {
    let cuda = gla_cuda::Cuda::new()?;
    println!(
        "on {} ({}): bf16 weights, f32 states; prompts of one length prefilled together, then batched decode steps (CUDA graph)",
        cuda.name(),
        cuda.arch()
    );
    let dec = gla_model::gpu::GpuDecoder::new(cuda, model)?;
    // untimed warm-up: kernel compiles (NVRTC, then cached), cuBLAS start-up, first allocations,
    // and for each batch size the eager first decode step and the capture of its CUDA graph
    for &b in &a.batch {
        let mut st: Vec<gla_model::gpu::GpuState> = (0..b).map(|_| dec.new_state()).collect::<Result<_, _>>()?;
        let mut sref: Vec<&mut gla_model::gpu::GpuState> = st.iter_mut().collect();
        let warm: Vec<u32> = (0..a.prompt_len.min(128) as u32).map(|i| i % model.dims.vocab as u32).collect();
        dec.prefill_batch(&vec![&warm[..]; b], &mut sref)?;
        for _ in 0..2 {
            dec.decode_batch(&vec![0; b], &mut sref)?;
        }
    }
    // a state's size after its run: attention layers' KV caches grow with the tokens
    bench_batches(a, &dec, model.dims.vocab, gla_model::gpu::GpuState::bytes)
}

/// `--contexts` on the GPU: the peak of the device memory pool (weights, activations of one
/// prefill window, states) for one sequence at each context length.
#[cfg(feature = "cuda")]
fn memory_cuda(a: &BenchArgs, model: &GlaModel) -> Result<Vec<MemEntry>> {
    if a.contexts.is_empty() {
        return Ok(Vec::new());
    }
    // a fresh decoder, not the batch benchmark's: its decode slots (activations, graphs) would
    // sit under every peak measured here
    let cuda = gla_cuda::Cuda::new()?;
    let dec = gla_model::gpu::GpuDecoder::new(cuda.clone(), model)?;
    let bytes = dec.state_bytes();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    bench_contexts(
        a,
        &dec,
        model.dims.vocab,
        |_| bytes,
        &|| gla_cuda::weights::reset_peak_pool(&cuda),
        &|| mib(gla_cuda::weights::peak_pool_bytes(&cuda)),
        "GPU memory pool high-water mark (weights included)",
    )
}

#[cfg(not(feature = "cuda"))]
fn bench_cuda(_: &BenchArgs, _: &GlaModel) -> Result<Vec<BenchEntry>> {
    bail!("this gla was built without the `cuda` feature")
}

#[cfg(not(feature = "cuda"))]
fn memory_cuda(_: &BenchArgs, _: &GlaModel) -> Result<Vec<MemEntry>> {
    bail!("this gla was built without the `cuda` feature")
}

#[cfg(test)]
mod tests {
    #[test]
    fn stop_strings_take_shell_escapes() {
        assert_eq!(super::unescape(r"\n\nUser:"), "\n\nUser:");
        assert_eq!(super::unescape(r"a\tb\\n\q\"), "a\tb\\n\\q\\");
    }
}

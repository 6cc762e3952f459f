//! Text generation: a prompt (or a batch of prompts) in, tokens streamed out, with the sampling
//! of [`crate::sample`], a token budget, stop strings and the end-of-sequence token.
//!
//! The model is loaded once and [`generate`] / [`generate_batch`] may run any number of times on
//! it (each call makes fresh [`State`]s). Streaming hands out text only when it is final: bytes
//! of an unfinished UTF-8 character and text that could still become a stop string are held back
//! until the next token decides.
//!
//! ```
//! use gla_model::generate::{generate, GenerateOptions};
//! use gla_model::tokenizer::Tokenizer;
//! use gla_model::{GlaConfig, GlaModel};
//! let m = GlaModel::new(GlaConfig::tiny(32, 1, 2, 256), 0).unwrap();
//! let opts = GenerateOptions { max_new_tokens: 5, eos: vec![], ..Default::default() };
//! let mut streamed = String::new();
//! let g = generate(&m, &Tokenizer::Bytes, "hi", &opts, |s| streamed.push_str(s)).unwrap();
//! assert_eq!(g.tokens.len(), 5);
//! assert_eq!(streamed, g.text);
//! ```

use crate::infer::State;
use crate::model::GlaModel;
use crate::sample::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

pub use crate::error::GenerateError;

/// Options of one generation call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// The most tokens generated per prompt. Default 128.
    pub max_new_tokens: usize,
    /// How tokens are chosen (default: greedy). Each prompt gets its own sampler seeded with
    /// `sampling.seed`, so a prompt gives the same tokens alone or in a batch.
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these; the text ends before it.
    pub stop_strings: Vec<String>,
    /// Generation stops after one of these token ids (not part of the text). Default: none;
    /// [`GenerateOptions::eos_from_config`] reads the model config's `eos_token_id`.
    pub eos: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 128, sampling: SamplingParams::default(), stop_strings: Vec::new(), eos: Vec::new() }
    }
}

impl GenerateOptions {
    /// The `eos_token_id` of the model's config (a number or a list of numbers), as ids.
    pub fn eos_from_config(model: &GlaModel) -> Vec<u32> {
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                _ => Vec::new(),
            }
        };
        model.config.eos_token_id().map(ids).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), GenerateError> {
        self.sampling.validate()?;
        if let Some(i) = self.stop_strings.iter().position(String::is_empty) {
            return Err(GenerateError::BadOption { key: "stop_strings", reason: format!("stop string {i} is empty") });
        }
        Ok(())
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// An end-of-sequence token was generated.
    Eos,
    /// The text reached a stop string.
    StopString,
}

impl StopReason {
    /// `length`, `eos` or `stop`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::MaxTokens => "length",
            StopReason::Eos => "eos",
            StopReason::StopString => "stop",
        }
    }
}

/// The result of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt_tokens: Vec<u32>,
    /// Generated ids (including an end-of-sequence token that stopped it).
    pub tokens: Vec<u32>,
    /// Generated text, cut before a stop string.
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
}

/// What generates logits from token ids with one state per sequence: the CPU model
/// ([`GlaModel`], through [`crate::infer`]) or a device (with the `cuda` feature, `gpu::GpuDecoder`).
pub trait Decoder {
    /// One sequence's state (recurrent states and conv caches).
    type State;
    /// A fresh state (an empty context).
    ///
    /// # Errors
    /// Device errors.
    fn new_state(&self) -> Result<Self::State, crate::Error>;
    /// Feeds each prompt into its state; the logits of each prompt's last position.
    ///
    /// # Errors
    /// Model or device errors.
    fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut Self::State]) -> Result<Vec<Vec<f32>>, crate::Error>;
    /// One token per sequence; each sequence's logits.
    ///
    /// # Errors
    /// Model or device errors.
    fn decode_batch(&self, ids: &[u32], states: &mut [&mut Self::State]) -> Result<Vec<Vec<f32>>, crate::Error>;
}

impl Decoder for GlaModel {
    type State = State;
    fn new_state(&self) -> Result<State, crate::Error> {
        Ok(GlaModel::new_state(self))
    }
    fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>, crate::Error> {
        GlaModel::prefill_batch(self, prompts, states)
    }
    fn decode_batch(&self, ids: &[u32], states: &mut [&mut State]) -> Result<Vec<Vec<f32>>, crate::Error> {
        GlaModel::decode_batch(self, ids, states)
    }
}

/// Tokens a piece of text may stay undecoded while it ends in an incomplete character (U+FFFD):
/// a UTF-8 character spans at most 4 byte tokens, so a longer tail is invalid text, emitted as is.
const MAX_PENDING: usize = 4;

/// One sequence being generated: its state, sampler and the streaming bookkeeping.
///
/// Decoding is incremental (the prefix/read offsets of Hugging Face's streaming decoders): each
/// step decodes only the tokens since the last emitted piece, so a step costs O(1) in the
/// length of the text, and a stop string is searched only where a new one could end.
struct Seq<S> {
    state: S,
    sampler: Sampler,
    context: Vec<u32>,
    prompt_len: usize,
    /// The text so far: the concatenation of the decoded pieces.
    text: String,
    /// Bytes of `text` given to the caller.
    emitted: usize,
    /// Generated tokens (from the prompt's end) before the last decoded piece's context.
    prefix_offset: usize,
    /// Generated tokens already in `text`.
    read_offset: usize,
    /// Bytes of `text` already searched for stop strings.
    scanned: usize,
    stop: Option<StopReason>,
}

impl<S> Seq<S> {
    /// Decodes the tokens after `read_offset` (up to `end` generated tokens) into text appended
    /// to `text`; holds them back while they end in an incomplete character, unless `force` or
    /// more than [`MAX_PENDING`] tokens wait.
    fn decode_new(&mut self, tok: &Tokenizer, end: usize, force: bool) -> Result<(), GenerateError> {
        let gen = &self.context[self.prompt_len..self.prompt_len + end];
        if end <= self.read_offset {
            return Ok(());
        }
        let prefix = tok.decode(&gen[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&gen[self.prefix_offset..])?;
        let pending = end - self.read_offset;
        if !force && pending <= MAX_PENDING && (full.len() <= prefix.len() || full.ends_with('\u{FFFD}')) {
            return Ok(());
        }
        // the context tokens decode the same alone and followed by the new ones, as a rule; if a
        // tokenizer merges across them, the new text is what follows the common part
        let piece = full.get(prefix.len()..).filter(|_| full.starts_with(&prefix)).unwrap_or(&full);
        self.text.push_str(piece);
        self.prefix_offset = self.read_offset;
        self.read_offset = end;
        Ok(())
    }

    fn push(&mut self, t: u32, tok: &Tokenizer, opts: &GenerateOptions) -> Result<String, GenerateError> {
        self.context.push(t);
        let n_gen = self.context.len() - self.prompt_len;
        if opts.eos.contains(&t) {
            self.stop = Some(StopReason::Eos);
            // the end-of-sequence token itself is no text
            self.decode_new(tok, n_gen - 1, true)?;
        } else {
            let last = n_gen >= opts.max_new_tokens;
            self.decode_new(tok, n_gen, last)?;
            if last {
                self.stop = Some(StopReason::MaxTokens);
            }
        }
        // a stop string can only end in the new text: search from the longest one's reach back
        let reach = opts.stop_strings.iter().map(String::len).max().unwrap_or(0);
        let from = floor_char_boundary(&self.text, self.scanned.saturating_sub(reach.saturating_sub(1)));
        let hit = opts.stop_strings.iter().filter_map(|s| self.text[from..].find(s.as_str())).min();
        self.scanned = self.text.len();
        if let Some(p) = hit {
            self.text.truncate(from + p);
            self.stop = Some(StopReason::StopString);
        }
        if self.stop.is_some() {
            return Ok(self.flush_all());
        }
        // hold back a tail that may be the start of a stop string
        let base = self.text.len();
        let mut safe = base;
        for s in &opts.stop_strings {
            let held = (1..s.len()).rev().filter(|&i| s.is_char_boundary(i)).find(|&i| self.text.ends_with(&s[..i]));
            if let Some(i) = held {
                safe = safe.min(base - i);
            }
        }
        let safe = floor_char_boundary(&self.text, safe.max(self.emitted));
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        Ok(out)
    }

    /// Everything not yet given to the caller.
    fn flush_all(&mut self) -> String {
        let out = self.text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = self.text.len();
        out
    }

    fn finish(self) -> Generation {
        Generation {
            prompt_tokens: self.context[..self.prompt_len].to_vec(),
            tokens: self.context[self.prompt_len..].to_vec(),
            text: self.text,
            stop: self.stop.unwrap_or(StopReason::MaxTokens),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Logits of ids the tokenizer cannot decode (beyond its vocabulary) are masked out.
fn mask(logits: &mut [f32], tok: &Tokenizer) {
    let n = tok.vocab_size();
    if n < logits.len() {
        logits[n..].fill(f32::NEG_INFINITY);
    }
}

/// Generates from one prompt; `on_text` receives the text as it becomes final (its pieces
/// concatenate to [`Generation::text`]).
///
/// # Errors
/// [`GenerateError::BadOption`], [`GenerateError::EmptyPrompt`], tokenizer and model errors.
pub fn generate<D: Decoder>(
    model: &D,
    tok: &Tokenizer,
    prompt: &str,
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError> {
    let mut out = generate_batch(model, tok, &[prompt], opts, |_, s| on_text(s))?;
    Ok(out.pop().expect("one prompt, one generation"))
}

/// Generates from several prompts at once (one [`State`] each; prompts of different lengths are
/// fine; each decode step runs every unfinished sequence together). `on_text(i, piece)` receives
/// prompt `i`'s text as it becomes final. Returns one [`Generation`] per prompt, in order.
///
/// # Errors
/// As [`generate`].
pub fn generate_batch<D: Decoder>(
    model: &D,
    tok: &Tokenizer,
    prompts: &[&str],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generation>, GenerateError> {
    opts.validate()?;
    let encoded = prompts.iter().map(|p| tok.encode(p)).collect::<Result<Vec<_>, _>>()?;
    generate_ids(model, tok, &encoded, opts, &mut on_text)
}

/// [`generate_batch`] from token ids.
///
/// # Errors
/// As [`generate`].
pub fn generate_ids<D: Decoder>(
    model: &D,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>, GenerateError> {
    opts.validate()?;
    if let Some(index) = prompts.iter().position(Vec::is_empty) {
        return Err(GenerateError::EmptyPrompt { index });
    }
    let mut seqs = prompts
        .iter()
        .map(|p| {
            Ok(Seq {
                state: model.new_state()?,
                sampler: Sampler::new(opts.sampling.clone())?,
                context: p.clone(),
                prompt_len: p.len(),
                text: String::new(),
                emitted: 0,
                prefix_offset: 0,
                read_offset: 0,
                scanned: 0,
                stop: (opts.max_new_tokens == 0).then_some(StopReason::MaxTokens),
            })
        })
        .collect::<Result<Vec<_>, GenerateError>>()?;
    if opts.max_new_tokens == 0 {
        return Ok(seqs.into_iter().map(Seq::finish).collect());
    }
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut states: Vec<&mut D::State> = seqs.iter_mut().map(|s| &mut s.state).collect();
    let mut logits = model.prefill_batch(&refs, &mut states)?;
    drop(states);
    let mut active: Vec<usize> = (0..seqs.len()).collect();
    loop {
        let mut next = Vec::with_capacity(active.len());
        for (&i, l) in active.iter().zip(logits.iter_mut()) {
            mask(l, tok);
            let s = &mut seqs[i];
            let t = s.sampler.sample(l, &s.context);
            let piece = s.push(t, tok, opts)?;
            if !piece.is_empty() {
                on_text(i, &piece);
            }
            next.push(t);
        }
        let (ids, still): (Vec<u32>, Vec<usize>) =
            active.iter().zip(next).filter(|(&i, _)| seqs[i].stop.is_none()).map(|(&i, t)| (t, i)).unzip();
        if still.is_empty() {
            break;
        }
        active = still;
        let mut states: Vec<&mut D::State> =
            seqs.iter_mut().enumerate().filter(|(i, _)| active.binary_search(i).is_ok()).map(|(_, s)| &mut s.state).collect();
        logits = model.decode_batch(&ids, &mut states)?;
    }
    Ok(seqs.into_iter().map(Seq::finish).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(prompt: &[u32]) -> Seq<()> {
        Seq {
            state: (),
            sampler: Sampler::new(SamplingParams::default()).expect("greedy"),
            context: prompt.to_vec(),
            prompt_len: prompt.len(),
            text: String::new(),
            emitted: 0,
            prefix_offset: 0,
            read_offset: 0,
            scanned: 0,
            stop: None,
        }
    }

    #[test]
    fn streaming_decodes_a_bounded_window_per_token() {
        // 10k tokens of mixed ASCII and 2- and 3-byte characters: every step decodes only the
        // tokens since the last emitted piece (the window never grows with the text), and the
        // pieces put together are the whole text
        let text: String = (0..4000).map(|i| ['a', 'é', '€', ' '][i % 4]).collect();
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let opts = GenerateOptions { max_new_tokens: ids.len(), ..GenerateOptions::default() };
        let mut s = seq(&[1, 2, 3]);
        let mut out = String::new();
        let mut widest = 0;
        for &t in &ids {
            out += &s.push(t, &Tokenizer::Bytes, &opts).expect("push");
            let n_gen = s.context.len() - s.prompt_len;
            widest = widest.max(n_gen - s.prefix_offset);
        }
        assert_eq!(out, text);
        assert!(widest <= 2 * MAX_PENDING + 1, "decode window of {widest} tokens");
    }

    #[test]
    fn invalid_bytes_are_emitted_within_four_tokens() {
        // 0xFF never completes a character: it must not hold the stream back for long
        let opts = GenerateOptions { max_new_tokens: 1000, ..GenerateOptions::default() };
        let mut s = seq(&[65]);
        let mut waited = 0;
        for i in 0..100 {
            let piece = s.push(0xFF, &Tokenizer::Bytes, &opts).expect("push");
            if piece.is_empty() {
                waited += 1;
                assert!(waited <= MAX_PENDING, "token {i}: text held back for {waited} tokens");
            } else {
                waited = 0;
            }
        }
        assert!(s.text.chars().all(|c| c == '\u{FFFD}') && !s.text.is_empty());
    }
}

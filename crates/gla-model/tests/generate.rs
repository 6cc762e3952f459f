//! Sampling, the byte-level tokenizer and the generation loop (streaming, stop strings, EOS,
//! batches). Tiny models only.

use gla_model::generate::{generate, generate_batch, GenerateError, GenerateOptions, StopReason};
use gla_model::sample::{Sampler, SamplingParams};
use gla_model::tokenizer::Tokenizer;
use gla_model::{GlaConfig, GlaModel};

fn sampler(p: SamplingParams) -> Sampler {
    Sampler::new(p).unwrap()
}

#[test]
fn sample_greedy_and_filters() {
    let logits = [1.0, 3.0, 2.0, 3.0, -1.0];
    // greedy: the first maximum
    assert_eq!(sampler(SamplingParams::default()).sample(&logits, &[]), 1);
    // top-k = 1 and a tiny top-p are greedy whatever the temperature and seed
    for seed in 0..20 {
        let k1 = SamplingParams { temperature: 5.0, top_k: 1, seed, ..Default::default() };
        assert_eq!(sampler(k1).sample(&[1.0, 3.0, 2.0], &[]), 1);
        let p = SamplingParams { temperature: 5.0, top_p: 1e-3, seed, ..Default::default() };
        assert_eq!(sampler(p).sample(&[1.0, 3.0, 2.0], &[]), 1);
    }
    // top-k = 2 keeps the two best (plus ties)
    let mut s = sampler(SamplingParams { temperature: 10.0, top_k: 2, seed: 1, ..Default::default() });
    for _ in 0..200 {
        assert!(matches!(s.sample(&logits, &[]), 1 | 3));
    }
    // NaN is never picked
    assert_eq!(sampler(SamplingParams::default()).sample(&[f32::NAN, 0.0], &[]), 1);
}

#[test]
fn sample_repetition_penalty_is_hugging_faces() {
    let p = SamplingParams { repetition_penalty: 1.2, ..Default::default() };
    // positive logit divided: 2.0 / 1.2 < 1.9
    assert_eq!(sampler(p.clone()).sample(&[2.0, 1.9], &[0]), 1);
    assert_eq!(sampler(p.clone()).sample(&[2.0, 1.9], &[]), 0);
    // negative logit multiplied: -1.0 * 1.2 < -1.1
    assert_eq!(sampler(p).sample(&[-1.0, -1.1], &[0, 0]), 1);
}

#[test]
fn sample_is_seeded_and_follows_the_distribution() {
    let probs = [0.5f64, 0.3, 0.2];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
    let p = SamplingParams { temperature: 1.0, seed: 42, ..Default::default() };
    let (mut a, mut b) = (sampler(p.clone()), sampler(p));
    let n = 20000;
    let mut counts = [0usize; 3];
    for _ in 0..n {
        let t = a.sample(&logits, &[]);
        assert_eq!(t, b.sample(&logits, &[]));
        counts[t as usize] += 1;
    }
    for (c, p) in counts.iter().zip(probs) {
        assert!((*c as f64 / n as f64 - p).abs() < 0.015, "{counts:?}");
    }
    // top-p = 0.7 keeps {0.5, 0.3}: renormalised 0.625 / 0.375
    let mut s = sampler(SamplingParams { temperature: 1.0, top_p: 0.7, seed: 3, ..Default::default() });
    let zeros = (0..n).filter(|_| s.sample(&logits, &[]) == 0).count();
    assert!((zeros as f64 / n as f64 - 0.625).abs() < 0.015);
    let mut other = sampler(SamplingParams { temperature: 1.0, seed: 43, ..Default::default() });
    let mut a = sampler(SamplingParams { temperature: 1.0, seed: 42, ..Default::default() });
    let xs: Vec<u32> = (0..64).map(|_| a.sample(&logits, &[])).collect();
    let ys: Vec<u32> = (0..64).map(|_| other.sample(&logits, &[])).collect();
    assert_ne!(xs, ys, "another seed, another stream");
}

#[test]
fn sample_bad_options_are_named() {
    for (p, key) in [
        (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
        (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
        (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
        (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
    ] {
        match Sampler::new(p) {
            Err(GenerateError::BadOption { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[test]
fn tokenizer_bytes_round_trip() {
    let t = Tokenizer::Bytes;
    let s = "héllo, wörld ✓";
    assert_eq!(t.decode(&t.encode(s).unwrap()).unwrap(), s);
    assert_eq!(t.vocab_size(), 256);
    assert!(matches!(t.decode(&[300]), Err(GenerateError::Tokenizer { .. })));
    // a cut character decodes to U+FFFD, never an error
    assert_eq!(t.decode(&[0xE2, 0x9C]).unwrap(), "\u{FFFD}");
}

#[cfg(not(feature = "hf-tokenizer"))]
#[test]
fn tokenizer_json_without_the_feature_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("gla-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let e = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("hf-tokenizer"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(Tokenizer::from_dir(&dir), Ok(Tokenizer::Bytes)));
}

#[cfg(feature = "hf-tokenizer")]
#[test]
fn tokenizer_json_loads() {
    // a two-word WordLevel tokenizer written by hand
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"hello":0,"world":1,"[UNK]":2},"unk_token":"[UNK]"}}"#;
    let dir = std::env::temp_dir().join(format!("gla-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(t.vocab_size(), 3);
    assert_eq!(t.encode("hello world foo").unwrap(), [0, 1, 2]);
    assert_eq!(t.decode(&[1, 0]).unwrap(), "world hello");
}

fn byte_model(seed: u64) -> GlaModel {
    let c = GlaConfig { initializer_range: 0.2, use_short_conv: true, ..GlaConfig::tiny(32, 2, 2, 256) };
    GlaModel::new(c, seed).unwrap()
}

#[test]
fn generate_streams_exactly_the_text_and_honours_the_budget() {
    let m = byte_model(1);
    let opts = GenerateOptions { max_new_tokens: 40, ..Default::default() };
    let mut streamed = String::new();
    let g = generate(&m, &Tokenizer::Bytes, "The cat", &opts, |s| streamed.push_str(s)).unwrap();
    assert_eq!(g.tokens.len(), 40);
    assert_eq!(g.stop, StopReason::MaxTokens);
    assert_eq!(g.prompt_tokens, b"The cat".iter().map(|&b| b as u32).collect::<Vec<_>>());
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, Tokenizer::Bytes.decode(&g.tokens).unwrap());
    // greedy is deterministic, and equals the model's own prefill/decode argmax
    let again = generate(&m, &Tokenizer::Bytes, "The cat", &opts, |_| {}).unwrap();
    assert_eq!(again, g);
    let zero = GenerateOptions { max_new_tokens: 0, ..Default::default() };
    assert!(generate(&m, &Tokenizer::Bytes, "x", &zero, |_| {}).unwrap().tokens.is_empty());
    assert!(matches!(generate(&m, &Tokenizer::Bytes, "", &opts, |_| {}), Err(GenerateError::EmptyPrompt { index: 0 })));
}

#[test]
fn generate_stops_at_a_stop_string_and_at_eos() {
    let m = byte_model(2);
    let tok = Tokenizer::Bytes;
    let long = GenerateOptions {
        max_new_tokens: 60,
        sampling: SamplingParams { temperature: 1.0, seed: 5, ..Default::default() },
        ..Default::default()
    };
    let full = generate(&m, &tok, "ab", &long, |_| {}).unwrap();
    // a stop string taken from the middle of what it generates without one (two characters)
    let chars: Vec<char> = full.text.chars().collect();
    let at =
        (chars.len() / 3..chars.len() - 1).find(|&i| chars[i] != '\u{FFFD}' && chars[i + 1] != '\u{FFFD}').expect("two clean characters");
    let stop: String = chars[at..at + 2].iter().collect();
    let first = full.text.find(&stop).unwrap();
    assert!(first > 0);
    let opts = GenerateOptions { stop_strings: vec!["never-generated-string".into(), stop.clone()], ..long.clone() };
    let mut streamed = String::new();
    let g = generate(&m, &tok, "ab", &opts, |s| streamed.push_str(s)).unwrap();
    assert_eq!(g.stop, StopReason::StopString);
    assert_eq!(g.text, full.text[..first]);
    assert_eq!(streamed, g.text, "nothing of the stop string is streamed");
    // EOS: the token at position 10 as end-of-sequence
    let eos = full.tokens[10];
    let first_eos = full.tokens.iter().position(|&t| t == eos).unwrap();
    let g = generate(&m, &tok, "ab", &GenerateOptions { eos: vec![eos], ..long }, |_| {}).unwrap();
    assert_eq!(g.stop, StopReason::Eos);
    assert_eq!(g.tokens, full.tokens[..=first_eos]);
    assert_eq!(g.text, tok.decode(&full.tokens[..first_eos]).unwrap());
}

#[test]
fn generate_batch_equals_each_prompt_alone() {
    let m = byte_model(3);
    let tok = Tokenizer::Bytes;
    let prompts = ["a", "The quick brown fox jumps over the lazy dog, then the lazy dog jumps over the fox.", "xyz", ""];
    for sampling in
        [SamplingParams::default(), SamplingParams { temperature: 0.8, top_k: 20, top_p: 0.9, repetition_penalty: 1.1, seed: 9 }]
    {
        let opts = GenerateOptions { max_new_tokens: 12, sampling, stop_strings: vec!["e".into()], ..Default::default() };
        let mut streamed = vec![String::new(); 3];
        let batch = generate_batch(&m, &tok, &prompts[..3], &opts, |i, s| streamed[i].push_str(s)).unwrap();
        for (i, p) in prompts[..3].iter().enumerate() {
            let alone = generate(&m, &tok, p, &opts, |_| {}).unwrap();
            assert_eq!(batch[i], alone, "prompt {i}");
            assert_eq!(streamed[i], alone.text);
        }
        assert!(matches!(generate_batch(&m, &tok, &prompts, &opts, |_, _| {}), Err(GenerateError::EmptyPrompt { index: 3 })));
    }
}

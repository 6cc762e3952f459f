//! Parity with fla itself: fixtures written by `tools/fla_fixtures.py` from fla 0.6.0's own
//! `GLAForCausalLM`, `DeltaNetForCausalLM` and `GatedDeltaNetForCausalLM`, pure and hybrid (fla's `attn`
//! key: its softmax `Attention` layer at some layers, flash_attn replaced by a float32 PyTorch
//! function of the same math) (float32, IEEE f32
//! Triton dots; the script says which fla kernel made each tensor) on the GPU, loaded here
//! through this crate's checkpoint loader (the family by `config.json`'s `model_type`). Per variant directory `<fixtures>/<variant>/`:
//!
//! - `config.json`, `model.safetensors`: fla's `save_pretrained` output;
//! - `fixture.safetensors`: `input_ids` i64 `[B, T]` (the labels too: fla shifts them), `logits`
//!   f32 `[B, T, vocab]`, `loss` f32 `[1]`, `grad.<name>` f32 for every fla parameter (a tied
//!   lm_head is the embedding: no `grad.lm_head.weight`), `greedy_prompt` i64 `[P]`,
//!   `greedy_tokens` i64 `[G]`, `greedy_logits` f32 `[G, vocab]` (fla's cached decode: the
//!   prompt's last-position logits, then each decode step's).
//!
//! Checks: logits and loss to a relative RMSE `||ours - fla|| / ||fla||` of 1e-4, every parameter
//! gradient to 1e-3, the greedy tokens of [`generate_ids`] identical, and the prefill/decode
//! logits along fla's tokens to 1e-4.
//!
//! `<fixtures>` is `tests/fixtures/fla/` of this crate, or `$GLA_FLA_FIXTURES` when set. A missing
//! fixture fails the test (it never passes silently).

use std::collections::BTreeSet;
use std::path::PathBuf;

use gla_model::checkpoint::load_model;
use gla_model::generate::{generate_ids, GenerateOptions};
use gla_model::sample::SamplingParams;
use gla_model::tokenizer::Tokenizer;
use gla_model::{shift_labels, Activations, GlaModel};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

const LOGITS_TOL: f64 = 1e-4;
const LOSS_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-3;
const DECODE_TOL: f64 = 1e-4;

/// Relative RMSE `||a - b|| / ||b||` in f64; NaN anywhere never passes (it yields NaN or inf).
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// `err <= tol`, false for NaN.
fn within(err: f64, tol: f64) -> bool {
    err <= tol
}

fn fixtures_root() -> PathBuf {
    match std::env::var_os("GLA_FLA_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fla"),
    }
}

/// The directory of one variant; panics with how to make it when it is missing.
fn variant_dir(variant: &str) -> PathBuf {
    let root = fixtures_root();
    let dir = root.join(variant);
    let missing: Vec<&str> =
        ["config.json", "model.safetensors", "fixture.safetensors"].into_iter().filter(|f| !dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        panic!(
            "fla parity fixture {} is missing {missing:?}.\n\
             These fixtures come from fla itself and are made on the GPU machine:\n  \
             pip install --no-index --no-deps --target /tmp/site .whl/*.whl   # fla 0.6.0 wheels\n  \
             PYTHONPATH=/tmp/site python3 tools/fla_fixtures.py $OUT/fla_fixtures\n\
             then copy $OUT/fla_fixtures/{variant}/ to crates/gla-model/tests/fixtures/fla/{variant}/ \
             (or set GLA_FLA_FIXTURES to a directory holding {variant}/).",
            dir.display()
        );
    }
    dir
}

struct Fixture {
    bytes: Vec<u8>,
    path: String,
}

impl Fixture {
    fn load(dir: &std::path::Path) -> Self {
        let p = dir.join("fixture.safetensors");
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        Self { bytes, path: p.display().to_string() }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", self.path))
    }

    fn names(&self) -> Vec<String> {
        self.st().names().into_iter().map(str::to_string).collect()
    }

    fn f32(&self, name: &str, shape: Option<&[usize]>) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{}: no tensor {name}", self.path));
        assert_eq!(t.dtype(), Dtype::F32, "{}: {name} is {:?}, expected F32", self.path, t.dtype());
        if let Some(s) = shape {
            assert_eq!(t.shape(), s, "{}: {name} has shape {:?}, expected {s:?}", self.path, t.shape());
        }
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{}: no tensor {name}", self.path));
        assert_eq!(t.dtype(), Dtype::I64, "{}: {name} is {:?}, expected I64", self.path, t.dtype());
        let v = t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        (v, t.shape().to_vec())
    }
}

fn ids_u32(ids: &[i64], vocab: usize, what: &str) -> Vec<u32> {
    ids.iter()
        .map(|&x| {
            assert!((0..vocab as i64).contains(&x), "{what}: id {x} outside the vocabulary of {vocab}");
            x as u32
        })
        .collect()
}

/// Loads one variant, runs every check, panics listing all failures at once.
fn check_variant(variant: &str) {
    let dir = variant_dir(variant);
    let model: GlaModel = load_model(&dir).unwrap_or_else(|e| panic!("load_model({}): {e}", dir.display()));
    let fx = Fixture::load(&dir);
    let vocab = model.dims.vocab;
    let mut failures: Vec<String> = Vec::new();

    // forward on fla's ids with fla's label shift
    let (ids64, shape) = fx.i64("input_ids");
    assert_eq!(shape.len(), 2, "input_ids must be [B, T], found {shape:?}");
    let (b, t) = (shape[0], shape[1]);
    let ids = ids_u32(&ids64, vocab, "input_ids");
    let targets = shift_labels(&ids64, t);
    let mut acts = Activations::new(&model.dims, b, t);
    let out = model.forward(&mut acts, &ids, &targets).expect("forward");
    assert_eq!(out.n_valid, b * (t - 1), "fla's shift leaves B*(T-1) labels");

    let fla_loss = fx.f32("loss", None);
    assert_eq!(fla_loss.len(), 1, "loss must hold one value");
    let loss_err = ((out.loss - fla_loss[0] as f64) / fla_loss[0] as f64).abs();
    println!("[{variant}] loss ours {:.7} fla {:.7} rel {loss_err:.2e}", out.loss, fla_loss[0]);
    if !within(loss_err, LOSS_TOL) {
        failures.push(format!("loss: ours {} fla {} rel {loss_err:.3e} > {LOSS_TOL:e}", out.loss, fla_loss[0]));
    }

    let fla_logits = fx.f32("logits", Some(&[b, t, vocab]));
    let logits = model.logits(&ids, b, t).expect("logits");
    let logits_err = rel(&logits, &fla_logits);
    println!("[{variant}] logits rel {logits_err:.2e}");
    if !within(logits_err, LOGITS_TOL) {
        failures.push(format!("logits: rel {logits_err:.3e} > {LOGITS_TOL:e}"));
    }

    // gradients: one per fla parameter, by fla's names
    let mut grads = vec![0.0f32; model.num_params()];
    model.backward(&mut acts, &mut grads, 1.0).expect("backward");
    let ours: BTreeSet<String> = model.layout.specs.iter().map(|s| s.name.clone()).collect();
    let fla: BTreeSet<String> = fx.names().into_iter().filter_map(|n| n.strip_prefix("grad.").map(str::to_string)).collect();
    let only_fla: Vec<_> = fla.difference(&ours).collect();
    let only_ours: Vec<_> = ours.difference(&fla).collect();
    if !only_fla.is_empty() || !only_ours.is_empty() {
        failures.push(format!(
            "parameter names differ (tie_word_embeddings = {}): fla only {only_fla:?}, ours only {only_ours:?}",
            model.dims.tied
        ));
    }
    let mut errs: Vec<(f64, &str)> = Vec::new();
    for s in model.layout.specs.iter().filter(|s| fla.contains(&s.name)) {
        let g = fx.f32(&format!("grad.{}", s.name), Some(&s.shape));
        errs.push((rel(&grads[s.range()], &g), &s.name));
    }
    errs.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Less));
    if let Some((e, n)) = errs.first() {
        println!("[{variant}] grads: {} compared, worst {n} rel {e:.2e}", errs.len());
    }
    for (e, n) in &errs {
        if !within(*e, GRAD_TOL) {
            failures.push(format!("grad.{n}: rel {e:.3e} > {GRAD_TOL:e}"));
        }
    }

    // greedy continuation with this crate's generation API
    let (prompt64, _) = fx.i64("greedy_prompt");
    let (want64, _) = fx.i64("greedy_tokens");
    let prompt = ids_u32(&prompt64, vocab, "greedy_prompt");
    let want = ids_u32(&want64, vocab, "greedy_tokens");
    // the byte tokenizer only decodes the text; it masks nothing while vocab <= 256
    assert!(vocab <= 256, "the greedy check uses the byte tokenizer: vocab {vocab} > 256");
    let opts =
        GenerateOptions { max_new_tokens: want.len(), sampling: SamplingParams::default(), stop_strings: Vec::new(), eos: Vec::new() };
    assert!(opts.sampling.is_greedy());
    let gen = generate_ids(&model, &Tokenizer::Bytes, std::slice::from_ref(&prompt), &opts, &mut |_, _| {}).expect("generate");
    let got = &gen[0].tokens;
    println!("[{variant}] greedy fla  {want:?}\n[{variant}] greedy ours {got:?}");
    if got != &want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        failures.push(format!("greedy tokens differ from step {at}: ours {got:?}, fla {want:?}"));
    }

    // prefill + decode logits along fla's tokens (teacher-forced: independent of the argmax)
    let fla_steps = fx.f32("greedy_logits", Some(&[want.len(), vocab]));
    let mut st = model.new_state();
    let mut worst = (0.0f64, 0usize);
    let mut margin = f32::INFINITY;
    for (i, step) in fla_steps.chunks_exact(vocab).enumerate() {
        let l = if i == 0 { model.prefill(&prompt, &mut st) } else { model.decode(want[i - 1], &mut st) }.expect("prefill/decode");
        let e = rel(&l, step);
        if e.is_nan() || e > worst.0 {
            worst = (e, i);
        }
        let mut s = step.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        margin = margin.min(s[0] - s[1]);
    }
    println!("[{variant}] decode logits worst rel {:.2e} at step {}; fla's smallest top-2 margin {margin:.2e}", worst.0, worst.1);
    if !within(worst.0, DECODE_TOL) {
        failures.push(format!("prefill/decode logits: rel {:.3e} at step {} > {DECODE_TOL:e}", worst.0, worst.1));
    }

    assert!(failures.is_empty(), "[{variant}] parity with fla failed ({}):\n  {}", dir.display(), failures.join("\n  "));
}

/// use_short_conv = false, untied lm_head (fla's defaults).
#[test]
fn fla_parity_noconv() {
    check_variant("noconv");
}

/// use_short_conv = true (conv_size 4), tie_word_embeddings = true.
#[test]
fn fla_parity_conv_tied() {
    check_variant("conv_tied");
}

/// use_short_conv = true (conv_size 4), feature_map = "relu" on q and k (fla's gla_7B map).
#[test]
fn fla_parity_fmap_relu() {
    check_variant("fmap_relu");
}

/// DeltaNet, fla's layer defaults: short conv, SiLU on q and k, L2 norm, beta = sigmoid, plain
/// RMSNorm output, untied.
#[test]
fn fla_parity_delta_net() {
    check_variant("delta_net");
}

/// DeltaNet with every other option: no short conv, relu on q and k, the sum norm, the gated
/// output norm, negative eigenvalues (beta = 2 sigmoid).
#[test]
fn fla_parity_delta_net_gate() {
    check_variant("delta_net_gate");
}

/// Gated DeltaNet, fla's layer defaults: the A_log / dt_bias decay, short conv, expand_v 2, the
/// swish-gated output norm.
#[test]
fn fla_parity_gated_deltanet() {
    check_variant("gated_deltanet");
}

/// Gated DeltaNet with grouped value heads (num_v_heads 4 over 2 heads), the sigmoid output
/// gate, negative eigenvalues and tied embeddings.
#[test]
fn fla_parity_gated_deltanet_gva() {
    check_variant("gated_deltanet_gva");
}

/// A hybrid GLA stack (fla's `attn` key): 3 layers, fla's softmax `Attention` at layer 1 with
/// qkv biases and 4 heads (head_dim 8, RoPE theta 10000), GLA with short conv elsewhere.
#[test]
fn fla_parity_hybrid_gla() {
    check_variant("hybrid_gla");
}

/// A hybrid Gated DeltaNet stack: 4 layers, attention at layers 1 and 3 with GQA (4 query heads
/// over 2 kv heads), a 16-token sliding window (shorter than the 100-token rows and the
/// 20-token prompt, so the decode runs on the ring buffer) and RoPE theta 1000.
#[test]
fn fla_parity_hybrid_gdn() {
    check_variant("hybrid_gdn");
}

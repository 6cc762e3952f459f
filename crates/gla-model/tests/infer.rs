//! Inference: prefill-then-decode against one full forward, batches against single sequences,
//! constant state memory, state import/export and typed errors. Tiny configs only.

use gla_model::infer::{StateLayout, PREFILL_WINDOW};
use gla_model::{Error, GlaConfig, GlaModel, Rng};

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn model(conv: bool, tied: bool, kv_heads: Option<usize>) -> GlaModel {
    let c = GlaConfig {
        use_short_conv: conv,
        tie_word_embeddings: tied,
        num_kv_heads: kv_heads,
        initializer_range: 0.1,
        ..GlaConfig::tiny(32, 2, 4, 64)
    };
    GlaModel::new(c, 5).unwrap()
}

fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(vocab) as u32).collect()
}

/// Prefill `prompt` tokens (in `pieces`), then decode the rest one by one; every logits vector
/// (the prefill's last position and each decoded position) against the full forward.
fn check_prefill_decode(m: &GlaModel, total: usize, pieces: &[usize]) -> f64 {
    let vocab = m.dims.vocab;
    let ids = tokens(total, 9, vocab);
    let full = m.logits(&ids, 1, total).unwrap();
    let at = |t: usize| &full[t * vocab..(t + 1) * vocab];
    let mut st = m.new_state();
    let mut worst = 0.0f64;
    let mut pos = 0;
    for &p in pieces {
        let l = m.prefill(&ids[pos..pos + p], &mut st).unwrap();
        pos += p;
        worst = worst.max(rel(&l, at(pos - 1)));
    }
    while pos < total {
        let l = m.decode(ids[pos], &mut st).unwrap();
        worst = worst.max(rel(&l, at(pos)));
        pos += 1;
    }
    assert_eq!(st.seen_tokens(), total);
    worst
}

#[test]
fn infer_prefill_then_decode_equals_full_forward() {
    for (conv, tied, kv) in [(false, false, None), (true, true, None), (true, false, Some(2)), (false, true, Some(1))] {
        let m = model(conv, tied, kv);
        // chunked prefill (T > 64), recurrent prefill (T <= 64), a prompt in two turns
        for pieces in [&[70][..], &[20], &[1], &[70, 65, 3]] {
            let total = pieces.iter().sum::<usize>() + 8;
            let e = check_prefill_decode(&m, total, pieces);
            eprintln!("conv={conv} tied={tied} kv={kv:?} pieces={pieces:?}: worst rel err {e:.2e}");
            assert!(e <= 1e-4, "conv={conv} tied={tied} kv={kv:?} pieces={pieces:?}: rel err {e:e}");
        }
    }
}

#[test]
fn infer_with_a_feature_map_equals_full_forward() {
    // the feature map sits between the conv (with its cache) and the GLA op on every path
    for fm in ["relu", "silu"] {
        let c = GlaConfig {
            feature_map: Some(fm.into()),
            use_short_conv: true,
            num_kv_heads: Some(2),
            initializer_range: 0.1,
            ..GlaConfig::tiny(32, 2, 4, 64)
        };
        let m = GlaModel::new(c, 5).unwrap();
        for pieces in [&[70][..], &[20, 50, 1]] {
            let total = pieces.iter().sum::<usize>() + 8;
            let e = check_prefill_decode(&m, total, pieces);
            assert!(e <= 1e-4, "{fm} pieces={pieces:?}: rel err {e:e}");
        }
    }
}

#[test]
fn infer_long_prompt_goes_in_windows() {
    // a prompt longer than one window: the state is carried across windows
    let m = GlaModel::new(GlaConfig { use_short_conv: true, initializer_range: 0.1, ..GlaConfig::tiny(16, 1, 2, 32) }, 3).unwrap();
    let e = check_prefill_decode(&m, PREFILL_WINDOW + 70 + 2, &[PREFILL_WINDOW + 70]);
    assert!(e <= 1e-4, "rel err {e:e}");
}

fn greedy(l: &[f32]) -> u32 {
    l.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0 as u32
}

#[test]
fn infer_batch_of_different_lengths_equals_each_alone() {
    let m = model(true, false, Some(2));
    let prompts: Vec<Vec<u32>> = [5usize, 70, 1, 33].iter().enumerate().map(|(i, &n)| tokens(n, 100 + i as u64, 64)).collect();
    let steps = 6;
    // alone
    let mut alone = Vec::new();
    let mut alone_logits = Vec::new();
    for p in &prompts {
        let mut st = m.new_state();
        let mut l = m.prefill(p, &mut st).unwrap();
        let mut out = Vec::new();
        let mut ls = Vec::new();
        for _ in 0..steps {
            let t = greedy(&l);
            out.push(t);
            ls.push(l.clone());
            l = m.decode(t, &mut st).unwrap();
        }
        alone.push(out);
        alone_logits.push(ls);
    }
    // batched
    let mut states: Vec<_> = prompts.iter().map(|_| m.new_state()).collect();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut sts: Vec<_> = states.iter_mut().collect();
    let mut ls = m.prefill_batch(&refs, &mut sts).unwrap();
    let mut batch: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    #[allow(clippy::needless_range_loop)]
    for step in 0..steps {
        let ids: Vec<u32> = ls.iter().map(|l| greedy(l)).collect();
        for (i, &t) in ids.iter().enumerate() {
            batch[i].push(t);
            let e = rel(&ls[i], &alone_logits[i][step]);
            assert!(e <= 1e-5, "sequence {i} step {step}: rel err {e:e}");
        }
        ls = m.decode_batch(&ids, &mut sts).unwrap();
    }
    assert_eq!(batch, alone);
}

#[test]
fn infer_state_memory_does_not_grow_with_context() {
    let m = model(true, false, None);
    let mut st = m.new_state();
    let empty = st.bytes();
    // L * (H*K*V + conv caches) f32 plus the struct
    let d = m.dims.gla().unwrap();
    let floats = m.dims.layers * (d.heads * d.head_k * d.head_v + d.conv * (d.key_dim + d.key_dim_kv + d.value_dim_kv));
    assert!(empty >= 4 * floats && empty < 4 * floats + 1024, "{empty} bytes for {floats} floats");
    m.prefill(&tokens(10, 1, 64), &mut st).unwrap();
    assert_eq!(st.bytes(), empty);
    m.prefill(&tokens(300, 2, 64), &mut st).unwrap();
    for t in 0..20 {
        m.decode(t, &mut st).unwrap();
    }
    assert_eq!(st.seen_tokens(), 330);
    assert_eq!(st.bytes(), empty);
}

#[test]
fn infer_state_round_trips_through_flas_value_first_layout() {
    let m = model(true, false, None);
    let mut st = m.new_state();
    m.prefill(&tokens(12, 3, 64), &mut st).unwrap();
    let d = m.dims.gla().unwrap();
    let (k, v) = (d.head_k, d.head_v);
    let kf = st.export_recurrent(1, StateLayout::KeyFirst).unwrap();
    let vf = st.export_recurrent(1, StateLayout::ValueFirst).unwrap();
    // [H, V, K][h, j, i] == [H, K, V][h, i, j]
    for (h, i, j) in [(0, 0, 1), (1, 3, 5), (3, k - 1, v - 1)] {
        assert_eq!(vf[(h * v + j) * k + i], kf[(h * k + i) * v + j]);
    }
    let mut other = m.new_state();
    for l in 0..m.dims.layers {
        other.import_recurrent(l, &st.export_recurrent(l, StateLayout::ValueFirst).unwrap(), StateLayout::ValueFirst).unwrap();
        let c = &st.layers()[l].conv;
        other.import_conv(l, [&c[0], &c[1], &c[2]]).unwrap();
    }
    other.set_seen_tokens(st.seen_tokens());
    assert_eq!(other, st);
    assert_eq!(m.decode(4, &mut other).unwrap(), m.decode(4, &mut st).unwrap());
    assert!(matches!(other.import_recurrent(0, &[0.0; 3], StateLayout::ValueFirst), Err(Error::Shape { .. })));
    assert!(matches!(other.import_recurrent(9, &kf, StateLayout::KeyFirst), Err(Error::Shape { .. })));
    assert!(matches!(other.import_conv(0, [&[], &[], &[]]), Err(Error::Shape { .. })));
}

#[test]
fn infer_bad_inputs_are_typed_errors_and_leave_the_state_alone() {
    let m = model(false, false, None);
    let mut st = m.new_state();
    m.prefill(&[1, 2, 3], &mut st).unwrap();
    let before = st.clone();
    assert!(matches!(m.prefill(&[], &mut st), Err(Error::Shape { .. })));
    assert!(matches!(m.decode(64, &mut st), Err(Error::Token { value: 64, .. })));
    assert!(matches!(m.prefill(&[1, 99], &mut st), Err(Error::Token { index: 1, .. })));
    assert_eq!(st, before);
    let other = model(true, false, None);
    assert!(matches!(other.decode(1, &mut st), Err(Error::Shape { tensor: "state", .. })));
    assert!(matches!(m.decode_batch(&[1, 2], &mut [&mut st]), Err(Error::Shape { .. })));
}

#[test]
fn infer_loads_sharded_checkpoints_and_names_bad_tensors() {
    use gla_model::shards::{load_model_dir, save_sharded, INDEX_FILE};
    let m = model(true, false, Some(2));
    let dir = std::env::temp_dir().join(format!("gla-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    save_sharded(&dir, &m, 40_000).unwrap();
    let shards =
        std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".safetensors")).count();
    assert!(shards > 2, "{shards} shards");
    let back = load_model_dir(&dir).unwrap();
    assert_eq!(back.params, m.params);
    let mut st = back.new_state();
    assert_eq!(back.prefill(&[1, 2, 3], &mut st).unwrap(), m.prefill(&[1, 2, 3], &mut m.new_state()).unwrap());
    // a config that does not match the weights: the first mismatched tensor and its expected shape
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("\"vocab_size\": 64", "\"vocab_size\": 65")).unwrap();
    let e = load_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("model.embeddings.weight") && e.contains("[65, 32]") && e.contains("[64, 32]"), "{e}");
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    // a tensor missing from the index
    let idx = std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&idx).unwrap();
    let mut v2 = v.clone();
    v2["weight_map"].as_object_mut().unwrap().remove("model.layers.1.attn.k_conv1d.weight");
    std::fs::write(dir.join(INDEX_FILE), v2.to_string()).unwrap();
    let e = load_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.attn.k_conv1d.weight") && e.contains("[8, 1, 4]"), "{e}");
    std::fs::write(dir.join(INDEX_FILE), &idx).unwrap();
    // a truncated shard
    let shard = dir.join(v["weight_map"]["model.norm.weight"].as_str().unwrap());
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_model_dir(&dir).unwrap_err();
    assert!(matches!(e, Error::Tensor { .. }) && e.to_string().contains("truncated"), "{e}");
    std::fs::write(&shard, &bytes[..5]).unwrap();
    assert!(matches!(load_model_dir(&dir), Err(Error::Safetensors { .. })), "cut header");
    std::fs::write(&shard, vec![7u8; 4096]).unwrap();
    assert!(matches!(load_model_dir(&dir), Err(Error::Safetensors { .. })), "corrupt");
    // a single-file checkpoint cut short names the first tensor it lost
    let single = dir.join("single");
    gla_model::checkpoint::save_model(&single, &m).unwrap();
    let f = single.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_model_dir(&single).unwrap_err().to_string();
    assert!(e.contains("truncated file") && e.contains("model.layers."), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_prefill_plan_covers_every_token_once_in_equal_length_batches() {
    use gla_model::infer::{prefill_plan, PREFILL_TOKENS};
    let lens = [5usize, 3000, 70, 5, 9000, 3000, 3000, 1];
    for max_batch in [1, 2, 128] {
        let plan = prefill_plan(&lens, max_batch);
        let mut seen = vec![0usize; lens.len()];
        let mut finished = vec![false; lens.len()];
        for s in &plan {
            assert!(!s.seqs.is_empty() && s.seqs.len() <= max_batch);
            assert!(s.seqs.windows(2).all(|w| w[0] < w[1]), "index order: {s:?}");
            assert!(s.seqs.iter().all(|&i| lens[i] == lens[s.seqs[0]]), "equal lengths: {s:?}");
            assert!(s.end > s.start && s.seqs.len() * (s.end - s.start) <= PREFILL_TOKENS.max(64 * s.seqs.len()));
            assert!(s.end - s.start <= PREFILL_WINDOW);
            if !s.last {
                assert_eq!(s.end % 64, 0, "a window ending inside a prompt ends on a chunk boundary: {s:?}");
            }
            for &i in &s.seqs {
                assert_eq!(seen[i], s.start, "windows of prompt {i} in order, no gap or overlap");
                seen[i] = s.end;
                assert!(!finished[i]);
                finished[i] = s.last;
            }
        }
        assert_eq!(seen, lens, "every token of every prompt, max_batch {max_batch}");
        assert!(finished.iter().all(|&f| f));
    }
}

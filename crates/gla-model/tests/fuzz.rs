//! Fuzzing of every parser that reads a user's file: the safetensors weights (header and data),
//! `config.json`, the sharded index, `trainer_state.json` with the optimizer file, the token
//! cache (`.glatok`) and, with `--features hf-tokenizer`, `tokenizer.json`. Each target starts
//! from a valid file and applies seeded mutations, structured (a JSON value replaced by an
//! extreme one, a safetensors header edited and re-framed) and random (bit flips, splices,
//! truncations). Contract: every input ends in `Ok` or a typed error, within a few seconds,
//! never a panic, and no input makes the loader allocate beyond the memory budget.
//!
//! The CI run takes `GLA_FUZZ_SECS` seconds per target (default 1); a longer run:
//!
//!     GLA_FUZZ_SECS=300 GLA_FUZZ_SEED=7 cargo test --release -p gla-model --test fuzz -- --nocapture
//!
//! A crashing input is written to `$TMPDIR/gla-fuzz-crashes/<target>-<seed>-<exec>.bin`.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gla_model::checkpoint::{load_model, save_model, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE};
use gla_model::shards::{load_model_dir, save_sharded, INDEX_FILE};
use gla_model::{GlaConfig, GlaModel, Rng, TrainConfig, Trainer};

/// Counts live heap bytes and their peak, to hold every input to the budget.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        // SAFETY: as above.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The memory budget of this test process: small, so that a loader that trusts a size from the
/// file is caught refusing too late or not at all.
const BUDGET: u64 = 256 << 20;
/// The slowest an input may take.
const HANG: Duration = Duration::from_secs(5);

const INTERESTING_JSON: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "255",
    "256",
    "65536",
    "4294967295",
    "4294967296",
    "2147483648",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "1e300",
    "-1e300",
    "1e-300",
    "0.5",
    "1000000000000",
    "null",
    "true",
    "false",
    "\"\"",
    "\"gla\"",
    "\"F32\"",
    "\"BF16\"",
    "\"I64\"",
    "\"U8\"",
    "[]",
    "{}",
    "[0, 18446744073709551615]",
    "[1000000000, 1000000000]",
    "[4294967296, 4294967296]",
    "[0]",
    "[-1]",
    "\"../model.safetensors\"",
    "\"model.safetensors\"",
    "\"/dev/zero\"",
];

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len())]
}

/// One of [`INTERESTING_JSON`] as a value.
fn interesting(rng: &mut Rng) -> serde_json::Value {
    serde_json::from_str(INTERESTING_JSON[rng.below(INTERESTING_JSON.len())]).unwrap()
}

/// Random byte-level mutations (1-4 of them).
fn mutate_bytes(rng: &mut Rng, d: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = *pick(rng, &[0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b']', b',', b':', b'-', b'e', b'9', b'\\']);
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                d.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece = d[a..b].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, piece);
            }
            4 => {
                let at = rng.below(len + 1);
                let s = pick(rng, INTERESTING_JSON).as_bytes().to_vec();
                d.splice(at..at, s);
            }
            5 => d.truncate(rng.below(len + 1)),
            6 if len >= 8 => {
                // the safetensors length prefix, or any 8 bytes, set to an extreme value
                let at = if rng.below(2) == 0 { 0 } else { rng.below(len - 7) };
                let v: u64 = *pick(rng, &[0, 1, 2, u64::MAX, u64::MAX / 2, 1 << 32, 100_000_001, len as u64, len as u64 - 8]);
                d[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                d.splice(at..at, junk);
            }
        }
    }
}

/// Replaces, removes or grows one random node of a JSON value.
fn mutate_value(rng: &mut Rng, v: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    let descend = depth < 6 && rng.below(3) != 0;
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
            match rng.below(6) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    let new: Value = interesting(rng);
                    m.insert(format!("{k}_x"), new);
                }
                _ => mutate_value(rng, m.get_mut(&k).unwrap(), depth + 1),
            }
        }
        Value::Array(a) if descend && !a.is_empty() => match rng.below(5) {
            0 => {
                a.pop();
            }
            1 => {
                let x = a[rng.below(a.len())].clone();
                a.push(x);
            }
            _ => {
                let i = rng.below(a.len());
                mutate_value(rng, &mut a[i], depth + 1);
            }
        },
        Value::Number(n) if rng.below(2) == 0 => {
            let x = n.as_f64().unwrap_or(1.0);
            let f = *pick(rng, &[2.0, 1e3, 1e9, 1e18, -1.0, 0.0, 0.5, 1e300]);
            *v = serde_json::Number::from_f64(x * f).map_or(Value::Null, |m| {
                // integral results stay integers when they fit, as a file would hold them
                let y = m.as_f64().unwrap_or(0.0);
                if y.fract() == 0.0 && y.abs() < 1.8e19 {
                    if y >= 0.0 {
                        Value::from(y as u64)
                    } else {
                        Value::from(y as i64)
                    }
                } else {
                    Value::Number(m)
                }
            });
        }
        _ => *v = interesting(rng),
    }
}

/// A JSON file: structured mutations most of the time, bytes otherwise.
fn mutate_json_text(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(base) {
        Ok(mut v) if rng.below(4) != 0 => {
            for _ in 0..1 + rng.below(3) {
                mutate_value(rng, &mut v, 0);
            }
            let mut out = serde_json::to_vec(&v).unwrap();
            if rng.below(8) == 0 {
                mutate_bytes(rng, &mut out);
            }
            out
        }
        _ => {
            let mut d = base.to_vec();
            mutate_bytes(rng, &mut d);
            d
        }
    }
}

/// A safetensors file: its header edited as JSON and re-framed (the length prefix made right,
/// or not), its data cut or kept; or bytes.
fn mutate_safetensors(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let (header, data) = (&base[8..8 + n], &base[8 + n..]);
    if rng.below(3) == 0 {
        let mut d = base.to_vec();
        mutate_bytes(rng, &mut d);
        return d;
    }
    let h = mutate_json_text(rng, header);
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    let len = if rng.below(8) == 0 { rng.next_u64() % (2 * h.len() as u64 + 16) } else { h.len() as u64 };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h);
    let keep = if rng.below(6) == 0 { rng.below(data.len() + 1) } else { data.len() };
    out.extend_from_slice(&data[..keep]);
    if rng.below(10) == 0 {
        // weights that decode to NaN / Inf
        let at = 8 + h.len() + rng.below(keep.max(1)).min(keep.saturating_sub(4));
        if at + 4 <= out.len() {
            out[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
    }
    out
}

struct Target {
    name: &'static str,
    /// The file it mutates (in the target's working directory).
    file: PathBuf,
    mutate: fn(&mut Rng, &[u8]) -> Vec<u8>,
    /// The parser under test, on the working directory.
    run: Box<dyn Fn(&Path) -> bool>,
    dir: PathBuf,
}

/// One target for `secs` seconds: returns (executions, accepted, crashes).
fn fuzz(t: &Target, seed: u64, secs: f64, crash_dir: &Path) -> (u64, u64, Vec<String>) {
    let base = std::fs::read(&t.file).unwrap();
    let mut rng = Rng::new(seed ^ t.name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let start = Instant::now();
    let (mut execs, mut ok) = (0u64, 0u64);
    let mut crashes = Vec::new();
    // the valid file itself loads
    assert!((t.run)(&t.dir), "{}: the unmutated file must load", t.name);
    while start.elapsed().as_secs_f64() < secs {
        let input = (t.mutate)(&mut rng, &base);
        std::fs::write(&t.file, &input).unwrap();
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(&t.dir)));
        let took = t0.elapsed();
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before) as u64;
        let fault = match r {
            Err(p) => Some(format!(
                "panic: {}",
                p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
            )),
            Ok(_) if took > HANG => Some(format!("took {took:?}")),
            // the budget plus the input and the file copies a loader legitimately holds
            Ok(_) if peak > BUDGET + 4 * input.len() as u64 + (16 << 20) => Some(format!("allocated {peak} bytes")),
            Ok(accepted) => {
                ok += u64::from(accepted);
                None
            }
        };
        if let Some(f) = fault {
            let path = crash_dir.join(format!("{}-{seed}-{execs}.bin", t.name));
            std::fs::write(&path, &input).unwrap();
            crashes.push(format!("{}: {f} (input {})", t.name, path.display()));
        }
        execs += 1;
    }
    std::fs::write(&t.file, &base).unwrap();
    (execs, ok, crashes)
}

fn targets(root: &Path) -> Vec<Target> {
    let m = GlaModel::new(GlaConfig { use_short_conv: true, ..GlaConfig::tiny(16, 2, 2, 32) }, 1).unwrap();
    let single = root.join("single");
    save_model(&single, &m).unwrap();
    let sharded = root.join("sharded");
    save_sharded(&sharded, &m, 8192).unwrap();
    let run = root.join("run");
    let cfg = TrainConfig {
        steps: 1,
        batch_size: 2,
        eval_examples: 2,
        task: gla_model::Mqar { vocab: 32, seq_len: 16, num_kv_pairs: 2, ..Default::default() },
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(GlaConfig::tiny(16, 1, 1, 32), cfg).unwrap();
    tr.step().unwrap();
    let ckpt = tr.save(&run, 1).unwrap();
    let text = root.join("text");
    std::fs::create_dir_all(&text).unwrap();
    std::fs::write(text.join("a.txt"), "a small corpus for the token cache\n".repeat(8)).unwrap();
    let prepared =
        gla_model::text::prepare(&text.join("a.txt"), &gla_model::CorpusTokenizer::load(None).unwrap(), &root.join("cache")).unwrap();
    let tokfile = prepared.file.path().to_path_buf();

    #[cfg_attr(not(feature = "hf-tokenizer"), allow(unused_mut))]
    let mut v = vec![
        Target {
            name: "safetensors",
            file: single.join(WEIGHTS_FILE),
            mutate: mutate_safetensors,
            run: Box::new(|d| load_model_dir(d).is_ok()),
            dir: single.clone(),
        },
        Target {
            name: "config",
            file: single.join(CONFIG_FILE),
            mutate: mutate_json_text,
            run: Box::new(|d| load_model(d).is_ok()),
            dir: single.clone(),
        },
        Target {
            name: "index",
            file: sharded.join(INDEX_FILE),
            mutate: mutate_json_text,
            run: Box::new(|d| load_model_dir(d).is_ok()),
            dir: sharded.clone(),
        },
        Target {
            name: "shard",
            file: std::fs::read_dir(&sharded)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("model-00001-of-"))
                .unwrap(),
            mutate: mutate_safetensors,
            run: Box::new(|d| load_model_dir(d).is_ok()),
            dir: sharded.clone(),
        },
        Target {
            name: "trainer_state",
            file: ckpt.join(STATE_FILE),
            mutate: mutate_json_text,
            run: Box::new(|d| Trainer::resume(d, None).is_ok()),
            dir: run.clone(),
        },
        Target {
            name: "optimizer",
            file: ckpt.join(OPTIMIZER_FILE),
            mutate: mutate_safetensors,
            run: Box::new(|d| Trainer::resume(d, None).is_ok()),
            dir: run.clone(),
        },
        Target {
            name: "token_cache",
            file: tokfile.clone(),
            mutate: |rng, base| {
                let mut d = base.to_vec();
                mutate_bytes(rng, &mut d);
                d
            },
            run: Box::new(move |_| gla_model::text::TokenFile::open(&tokfile).is_ok()),
            dir: root.to_path_buf(),
        },
    ];
    #[cfg(feature = "hf-tokenizer")]
    {
        let tj = root.join("tokenizer.json");
        std::fs::write(
            &tj,
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]}}"#,
        )
        .unwrap();
        let f = tj.clone();
        v.push(Target {
            name: "tokenizer_json",
            file: tj,
            mutate: mutate_json_text,
            run: Box::new(move |_| gla_model::tokenizer::Tokenizer::from_file(&f).is_ok()),
            dir: root.to_path_buf(),
        });
    }
    v
}

#[test]
fn every_user_file_parser_survives_mutations() {
    // one test in this binary: the budget is set before anything reads it
    std::env::set_var("GLA_MEMORY_BUDGET", BUDGET.to_string());
    assert_eq!(gla_model::limits::memory_budget(), BUDGET);
    let secs: f64 = std::env::var("GLA_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let seed: u64 = std::env::var("GLA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(17);
    let root = std::env::temp_dir().join(format!("gla-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let crash_dir = std::env::temp_dir().join("gla-fuzz-crashes");
    std::fs::create_dir_all(&crash_dir).unwrap();
    // panics are caught and reported below, with their inputs
    std::panic::set_hook(Box::new(|_| {}));
    let mut all = Vec::new();
    let mut total = 0;
    for t in targets(&root) {
        let (execs, ok, crashes) = fuzz(&t, seed, secs, &crash_dir);
        println!("fuzz {:<15} {execs:>7} executions, {ok:>6} accepted, {} crashes", t.name, crashes.len());
        total += execs;
        all.extend(crashes);
    }
    let _ = std::panic::take_hook();
    println!("fuzz total: {total} executions, {} crashes (seed {seed}, {secs} s per target)", all.len());
    let _ = std::fs::remove_dir_all(&root);
    assert!(all.is_empty(), "{} crashing inputs:\n{}", all.len(), all.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
}

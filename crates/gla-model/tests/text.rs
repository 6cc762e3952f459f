//! Text corpora: tokenising a folder once into a token file, the cache, damaged files, the
//! window sampler, and exact resume of a text run.

use std::fs;
use std::path::{Path, PathBuf};

use gla_model::text::{list_sources, prepare, Header, TokenFile, HEADER_LEN};
use gla_model::{CorpusTokenizer, Error, GlaConfig, TextError, TextTask, TrainConfig, Trainer, IGNORE_INDEX};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-text-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A folder of two text files (one nested), a hidden file and a binary file.
fn corpus(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), "hello world\n").unwrap();
    fs::write(src.join("sub").join("b.txt"), "second doc").unwrap();
    fs::write(src.join(".hidden.txt"), "never read").unwrap();
    fs::write(src.join("image.bin"), [137u8, 80, 0, 1, 2]).unwrap();
    src
}

fn all_tokens(f: &TokenFile) -> Vec<u32> {
    (0..f.len()).map(|i| f.get(i)).collect()
}

/// Text long enough for a few windows: a deterministic pseudo-play.
fn play(n_lines: usize) -> String {
    let words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in", "mind"];
    (0..n_lines)
        .map(|i| format!("{}: {} {} {}.\n", ["HAMLET", "OPHELIA"][i % 2], words[i % 13], words[(i * 7) % 13], words[(i * 3 + 1) % 13]))
        .collect()
}

#[test]
fn a_folder_is_tokenised_once_in_path_order_and_reused() {
    let dir = tmpdir("folder");
    let src = corpus(&dir);
    let cache = dir.join("cache");
    let tok = CorpusTokenizer::bytes();
    let p = prepare(&src, &tok, &cache).unwrap();
    assert!(!p.reused);
    assert_eq!((p.tokenised, p.skipped), (2, 1), "two text files, one binary skipped, the hidden one not listed");
    assert_eq!(p.sources.files.len(), 3);
    let want: Vec<u32> = b"hello world\nsecond doc".iter().map(|&b| b as u32).collect();
    assert_eq!(all_tokens(&p.file), want, "a.txt then sub/b.txt, byte-level has no separator");
    let h = *p.file.header();
    assert_eq!((h.width, h.vocab, h.docs, h.count), (2, 256, 2, want.len() as u64));
    assert_eq!(fs::metadata(p.file.path()).unwrap().len(), (HEADER_LEN + 2 * want.len()) as u64);
    assert!(p.file.path().starts_with(&cache) && p.file.path().extension().unwrap() == "glatok");
    // the second time: the same file, not rewritten
    let mtime = fs::metadata(p.file.path()).unwrap().modified().unwrap();
    let again = prepare(&src, &tok, &cache).unwrap();
    assert!(again.reused);
    assert_eq!(again.file.path(), p.file.path());
    assert_eq!(all_tokens(&again.file), want);
    assert_eq!(fs::metadata(p.file.path()).unwrap().modified().unwrap(), mtime);
    // a single file is a corpus too, with its own cache file
    let one = prepare(&src.join("a.txt"), &tok, &cache).unwrap();
    assert_eq!(all_tokens(&one.file), want[..12]);
    assert_ne!(one.file.path(), p.file.path());
    // a token file inside the source folder is never read as text
    fs::copy(p.file.path(), src.join("old.glatok")).unwrap();
    assert_eq!(list_sources(&src).unwrap().files.len(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cache_is_rebuilt_when_a_file_changes() {
    let dir = tmpdir("rebuild");
    let src = corpus(&dir);
    let cache = dir.join("cache");
    let tok = CorpusTokenizer::bytes();
    let first = prepare(&src, &tok, &cache).unwrap();
    let path = first.file.path().to_path_buf();
    drop(first);
    // new content (another size)
    fs::write(src.join("sub").join("b.txt"), "second document").unwrap();
    let p = prepare(&src, &tok, &cache).unwrap();
    assert!(!p.reused);
    assert_eq!(p.file.path(), path, "same source and tokenizer: the same cache file, replaced");
    assert_eq!(p.file.len(), 12 + 15);
    // same size, only the modification time moves (an editor saving the same length)
    let key = p.sources.key;
    let f = fs::OpenOptions::new().write(true).open(src.join("a.txt")).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
    drop(f);
    let p = prepare(&src, &tok, &cache).unwrap();
    assert!(!p.reused);
    assert_ne!(p.sources.key, key);
    // a new file
    fs::write(src.join("c.txt"), "third").unwrap();
    let p = prepare(&src, &tok, &cache).unwrap();
    assert!(!p.reused && p.tokenised == 3);
    assert!(prepare(&src, &tok, &cache).unwrap().reused);
    // a damaged cache is rebuilt, not trusted
    drop(p);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let p = prepare(&src, &tok, &cache).unwrap();
    assert!(!p.reused);
    assert_eq!(all_tokens(&p.file).last(), Some(&(b't' as u32)));
    // no temporary file is left in the cache
    let names: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    fs::remove_dir_all(&dir).unwrap();
}

fn corrupt_reason(path: &Path) -> String {
    match TokenFile::open(path) {
        Err(e @ Error::Text(TextError::Corrupt { .. })) => {
            let s = e.to_string();
            assert!(s.contains(&path.display().to_string()), "the message names the file: {s}");
            s
        }
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[test]
fn damaged_token_files_are_typed_errors_naming_the_fault() {
    let dir = tmpdir("corrupt");
    let src = corpus(&dir);
    let p = prepare(&src, &CorpusTokenizer::bytes(), &dir.join("cache")).unwrap();
    let good = fs::read(p.file.path()).unwrap();
    let header = *p.file.header();
    drop(p);
    let f = dir.join("t.glatok");
    let write = |b: &[u8]| fs::write(&f, b).unwrap();

    write(&good[..good.len() - 4]);
    let s = corrupt_reason(&f);
    assert!(s.contains("truncated") && s.contains("counts 22 tokens") && s.contains("holds 20"), "{s}");
    write(&good[..10]);
    assert!(corrupt_reason(&f).contains("shorter than the 64-byte header"));
    write(&[]);
    assert!(corrupt_reason(&f).contains("0 bytes"));
    let mut b = good.clone();
    b[0] = b'X';
    write(&b);
    assert!(corrupt_reason(&f).contains("magic"));
    let mut b = good.clone();
    b[8] = 9;
    write(&b);
    assert!(corrupt_reason(&f).contains("version 9"));
    let mut b = good.clone();
    b[HEADER_LEN + 3] ^= 0x40;
    write(&b);
    assert!(corrupt_reason(&f).contains("checksum"));
    let mut b = good.clone();
    b.extend_from_slice(&[0, 0]);
    write(&b);
    assert!(corrupt_reason(&f).contains("header counts 22 tokens"));
    // an id outside the vocabulary, with a checksum that matches
    let mut b = good.clone();
    b[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&300u16.to_le_bytes());
    let sum = fnv(&b[HEADER_LEN..]);
    b[48..56].copy_from_slice(&sum.to_le_bytes());
    write(&b);
    let s = corrupt_reason(&f);
    assert!(s.contains("token 0 is id 300") && s.contains("vocabulary of 256"), "{s}");
    // the good bytes open, and another tokenizer's id is refused
    write(&good);
    assert_eq!(*TokenFile::open(&f).unwrap().header(), header);
    match TokenFile::open_for(&f, header.tokenizer_id ^ 1) {
        Err(Error::Text(TextError::TokenizerMismatch { path, .. })) => assert_eq!(path, f.display().to_string()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(TokenFile::open(&dir.join("none.glatok")), Err(Error::Io { .. })));
    let _: Header = header;
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_empty_and_short_corpora_are_typed_errors() {
    let dir = tmpdir("empty");
    let tok = CorpusTokenizer::bytes();
    let cache = dir.join("cache");
    let e = prepare(&dir.join("nope"), &tok, &cache).unwrap_err();
    assert!(matches!(e, Error::Text(TextError::Missing { .. })), "{e:?}");
    assert!(e.to_string().contains("nope"));
    fs::create_dir_all(dir.join("void")).unwrap();
    assert!(matches!(prepare(&dir.join("void"), &tok, &cache), Err(Error::Text(TextError::Empty { files: 0, .. }))));
    fs::write(dir.join("void").join("x.bin"), [0u8; 10]).unwrap();
    fs::write(dir.join("void").join("empty.txt"), "").unwrap();
    let e = prepare(&dir.join("void"), &tok, &cache).unwrap_err();
    assert!(matches!(e, Error::Text(TextError::Empty { files: 2, skipped: 1, .. })), "{e:?}");
    // no token file was published for an empty corpus
    assert!(fs::read_dir(&cache).map_or(true, |d| d.count() == 0));
    fs::write(dir.join("short.txt"), "0123456789abcdefghij").unwrap();
    let p = prepare(&dir.join("short.txt"), &tok, &cache).unwrap();
    let e = TextTask::new(&p, &tok, 16, 0.01).unwrap_err();
    assert!(matches!(e, Error::Text(TextError::TooShort { tokens: 20, window: 17, need: 34, .. })), "{e:?}");
    assert!(e.to_string().contains("--seq-len"));
    let t = TextTask::new(&p, &tok, 8, 0.01).unwrap();
    assert_eq!((t.val_tokens, t.count), (9, 20));
    assert!(matches!(TextTask::new(&p, &tok, 0, 0.01), Err(Error::BadArg { key: "seq_len", .. })));
    assert!(matches!(TextTask::new(&p, &tok, 4, 0.9), Err(Error::BadArg { key: "val_fraction", .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[cfg(not(feature = "hf-tokenizer"))]
#[test]
fn tokenizer_json_without_the_feature_says_how_to_get_it() {
    let e = CorpusTokenizer::from_file(Path::new("tokenizer.json")).unwrap_err();
    assert!(matches!(e, Error::Text(TextError::Tokenizer { .. })));
    assert!(e.to_string().contains("hf-tokenizer"), "{e}");
}

#[cfg(feature = "hf-tokenizer")]
#[test]
fn tokenizer_json_tokenises_words_with_an_eos_between_documents() {
    let dir = tmpdir("hf");
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"</s>":0,"[UNK]":1,"hello":2,"world":3,"second":4,"doc":5},"unk_token":"[UNK]"}}"#;
    fs::write(dir.join("tokenizer.json"), json).unwrap();
    let tok = CorpusTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!((tok.vocab_size(), tok.eos()), (6, Some(0)));
    let src = corpus(&dir);
    let p = prepare(&src, &tok, &dir.join("cache")).unwrap();
    assert_eq!(all_tokens(&p.file), [2, 3, 0, 4, 5, 0]);
    assert_ne!(tok.id(), CorpusTokenizer::bytes().id());
    let t = TextTask::new(&p, &tok, 1, 0.0).unwrap();
    assert!(matches!(t.check_tokenizer(&CorpusTokenizer::bytes()), Err(Error::Text(TextError::TokenizerMismatch { .. }))));
    t.check_tokenizer(&tok).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

fn text_task(dir: &Path, seq_len: usize) -> TextTask {
    let src = dir.join("play.txt");
    if !src.exists() {
        fs::write(&src, play(200)).unwrap();
    }
    let tok = CorpusTokenizer::bytes();
    let p = prepare(&src, &tok, &dir.join("cache")).unwrap();
    TextTask::new(&p, &tok, seq_len, 0.05).unwrap()
}

#[test]
fn windows_lie_in_the_training_split_and_follow_the_seed() {
    let dir = tmpdir("windows");
    let t = 32;
    let task = text_task(&dir, t);
    let text = play(200);
    let bytes = text.as_bytes();
    let d = task.open().unwrap();
    assert_eq!(d.train_tokens() + d.val_tokens(), bytes.len() as u64);
    assert_eq!(d.val_tokens(), (bytes.len() as f64 * 0.05).round() as u64);
    let b = 64;
    let (mut ids, mut tg) = (vec![0u32; b * t], vec![0i64; b * t]);
    d.batch(7, 0, b, &mut ids, &mut tg);
    let mut starts = std::collections::HashSet::new();
    for r in 0..b {
        let s = d.window_start(7, r as u64) as usize;
        assert!(s + t < d.train_tokens() as usize, "window {r} at {s} reaches the validation split");
        starts.insert(s);
        let row = &ids[r * t..(r + 1) * t];
        let trow = &tg[r * t..(r + 1) * t];
        assert!(row.iter().zip(&bytes[s..s + t]).all(|(&a, &c)| a == c as u32));
        // targets are the next tokens: every position labelled
        assert!(trow.iter().zip(&bytes[s + 1..s + t + 1]).all(|(&a, &c)| a == c as i64));
    }
    assert!(starts.len() > b / 2, "offsets vary: {}", starts.len());
    // window i depends on (seed, i) only: a batch from cursor 40 is rows 40.. of one from 0
    let (mut ids2, mut tg2) = (vec![0u32; b * t], vec![0i64; b * t]);
    d.batch(7, 40, 24, &mut ids2[..24 * t], &mut tg2[..24 * t]);
    assert_eq!(&ids2[..24 * t], &ids[40 * t..]);
    assert_eq!(&tg2[..24 * t], &tg[40 * t..]);
    d.batch(8, 0, b, &mut ids2, &mut tg2);
    assert_ne!(ids2, ids, "another seed, other windows");
    // reopening gives the same windows (the sampler has no state besides the cursor)
    let d2 = task.open().unwrap();
    d2.batch(7, 0, b, &mut ids2, &mut tg2);
    assert_eq!((&ids2, &tg2), (&ids, &tg));
    // evaluation: consecutive windows of the validation split, padding rows unlabelled
    let n = d.eval_windows(1000);
    assert_eq!(n as u64, (d.val_tokens() - 1) / t as u64);
    let rows = d.eval_batch(0, n, b, &mut ids, &mut tg);
    assert_eq!(rows, n.min(b));
    let v0 = d.train_tokens() as usize;
    assert!(ids[..t].iter().zip(&bytes[v0..]).all(|(&a, &c)| a == c as u32));
    assert!(tg[rows * t..].iter().all(|&x| x == IGNORE_INDEX));
    assert_eq!(d.eval_windows(2), 2);
    fs::remove_dir_all(&dir).unwrap();
}

fn text_run(task: TextTask, steps: u64) -> (GlaConfig, TrainConfig) {
    let model = GlaConfig { use_short_conv: true, intermediate_size: Some(32), ..GlaConfig::tiny(16, 1, 2, 256) };
    let train =
        TrainConfig { steps, batch_size: 3, grad_accum: 2, warmup: 2, eval_examples: 4, text: Some(task), ..TrainConfig::default() };
    (model, train)
}

#[test]
fn a_text_run_resumes_with_the_uninterrupted_losses() {
    let dir = tmpdir("resume");
    let task = text_task(&dir, 24);
    let (mc, tc) = text_run(task.clone(), 6);
    let mut full = Trainer::new(mc.clone(), tc.clone()).unwrap();
    let want: Vec<f64> = (0..6).map(|_| full.step().unwrap().loss).collect();
    assert!(want.iter().all(|l| l.is_finite() && *l > 0.0));
    let e = full.evaluate().unwrap();
    assert!((e.ppl - e.loss.exp()).abs() < 1e-9 && e.loss < (256f64).ln() + 1.0, "{e:?}");

    let run = dir.join("run");
    let mut first = Trainer::new(mc.clone(), tc.clone()).unwrap();
    for _ in 0..3 {
        first.step().unwrap();
    }
    first.save(&run, 2).unwrap();
    drop(first);
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("checkpoint-3").join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["data_cursor"], 3 * 6, "the cursor is the sampler's state");
    assert_eq!(state["train"]["text"]["seq_len"], 24);
    let mut second = Trainer::resume(&run, None).unwrap();
    for _ in 3..6 {
        second.step().unwrap();
    }
    assert_eq!(second.losses, want, "bit-exact losses after resume");

    // the token cache may vanish: resume re-tokenises the unchanged text into the same file
    fs::remove_file(&task.tokens).unwrap();
    let mut third = Trainer::resume(&run, None).unwrap();
    for _ in 3..6 {
        third.step().unwrap();
    }
    assert_eq!(third.losses, want);
    assert!(task.tokens.exists());
    // but other text behind a missing cache is refused, not trained on silently
    fs::remove_file(&task.tokens).unwrap();
    fs::write(dir.join("play.txt"), play(201)).unwrap();
    let e = Trainer::resume(&run, None).unwrap_err();
    assert!(matches!(e, Error::Text(TextError::Changed { .. })), "{e:?}");
    // a model whose vocabulary cannot hold the tokenizer's ids is refused up front
    let (small, tc) = text_run(task, 6);
    let e = Trainer::new(GlaConfig { vocab_size: 100, ..small }, tc).unwrap_err();
    assert!(matches!(e, Error::BadArg { key: "vocab", .. }), "{e:?}");
    fs::remove_dir_all(&dir).unwrap();
}

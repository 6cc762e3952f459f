//! `gla kernels`: the CUDA kernel sources of this binary, and their ahead-of-time compile into
//! the on-disk cache. The runtime compiles a source with NVRTC the first time one of its entry
//! points runs and keeps the cubin under the cache directory (`GLA_CACHE_DIR`, else
//! `~/.cache/gla`); `gla kernels compile` does all of it at once, without a GPU (NVRTC is a
//! library), so a container image or a machine without the toolkit's compiler starts warm.
//! `gla kernels resources` prints what ptxas allotted each entry point (registers, spills).

use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};

/// `gla kernels`.
#[derive(Subcommand)]
pub enum Cmd {
    /// List every kernel source and its entry points.
    List,
    /// Compile every kernel source for one GPU architecture into the cache (no GPU needed, only
    /// libnvrtc); sources already cached for this NVRTC and arch are read back, not recompiled.
    Compile(CompileArgs),
    /// Registers, barriers, stack, spills and static shared memory of every entry point, from
    /// ptxas (no GPU needed; not cached: a full compile). Spilling entries are marked.
    Resources(ResourcesArgs),
}

/// `gla kernels resources`.
#[derive(ClapArgs)]
pub struct ResourcesArgs {
    /// Target architecture (as for `gla kernels compile`).
    #[arg(long, default_value = "sm_90a")]
    arch: String,
    /// Only the sources whose path contains this (e.g. attn/, bidir/chunk_fwd).
    #[arg(long)]
    filter: Option<String>,
}

/// `gla kernels compile`.
#[derive(ClapArgs)]
pub struct CompileArgs {
    /// Target architecture, as the runtime names it: sm_90a on Hopper (H100 / H200), else
    /// `sm_<major><minor>` of the device (sm_80 on A100, sm_89 on L40).
    #[arg(long, default_value = "sm_90a")]
    arch: String,
    /// Cache directory to fill (sets GLA_CACHE_DIR for this run; default: GLA_CACHE_DIR, else
    /// $XDG_CACHE_HOME/gla, else ~/.cache/gla). Point the GPU runs at the same directory.
    #[arg(long)]
    cache: Option<std::path::PathBuf>,
}

/// `gla kernels ...`.
#[cfg(feature = "cuda")]
pub fn run(c: &Cmd) -> Result<bool> {
    use anyhow::Context;
    use gla_cuda::kernels::ALL;
    match c {
        Cmd::List => {
            for src in ALL {
                println!("{}  ({} entry points)", src.name, src.entries.len());
                for e in src.entries {
                    println!("    {e}");
                }
            }
            Ok(true)
        }
        Cmd::Resources(a) => {
            check_arch(&a.arch)?;
            gla_cuda::runtime::nvrtc_version().context("libnvrtc is needed (pip install nvidia-cuda-nvrtc)")?;
            println!("{:<36} {:>4} {:>4} {:>6} {:>7} {:>6} {:>6}", "entry", "regs", "bars", "stack", "spill-s", "spill-l", "smem");
            let mut spilling = 0;
            for src in ALL.iter().filter(|s| a.filter.as_deref().is_none_or(|f| s.name.contains(f))) {
                println!("{}", src.name);
                for k in gla_cuda::runtime::kernel_resources(src, &a.arch).with_context(|| format!("compiling {}", src.name))? {
                    let mark = if k.spill_stores > 0 { "  spills" } else { "" };
                    spilling += usize::from(k.spill_stores > 0);
                    println!(
                        "  {:<34} {:>4} {:>4} {:>6} {:>7} {:>6} {:>6}{mark}",
                        k.entry, k.registers, k.barriers, k.stack, k.spill_stores, k.spill_loads, k.smem
                    );
                }
            }
            println!("{spilling} entry points spill");
            Ok(true)
        }
        Cmd::Compile(a) => {
            check_arch(&a.arch)?;
            if let Some(dir) = &a.cache {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                // the runtime reads it at each compile; no other thread runs yet
                std::env::set_var("GLA_CACHE_DIR", dir);
            }
            let dir = gla_cuda::runtime::cache_dir().context("no cache directory: set --cache, GLA_CACHE_DIR or HOME")?;
            let (major, minor) = gla_cuda::runtime::nvrtc_version().context("libnvrtc is needed (pip install nvidia-cuda-nvrtc)")?;
            println!("NVRTC {major}.{minor}, {}, cache {}", a.arch, dir.display());
            let t0 = std::time::Instant::now();
            let mut failed = 0;
            for src in ALL {
                let t = std::time::Instant::now();
                match gla_cuda::runtime::compile_cubin(src, &a.arch) {
                    Ok(cubin) => println!("  {:<28} {:>9} bytes  {:>6.1} s", src.name, cubin.len(), t.elapsed().as_secs_f64()),
                    Err(e) => {
                        failed += 1;
                        println!("  {:<28} FAILED: {}", src.name, e.to_string().lines().next().unwrap_or_default());
                        eprintln!("{e}");
                    }
                }
            }
            println!("{} sources, {failed} failed, {:.1} s", ALL.len(), t0.elapsed().as_secs_f64());
            Ok(failed == 0)
        }
    }
}

/// An `--arch` the runtime's names allow.
#[cfg(feature = "cuda")]
fn check_arch(arch: &str) -> Result<()> {
    let digits = arch.strip_prefix("sm_").map(|d| d.strip_suffix('a').unwrap_or(d));
    if !digits.is_some_and(|d| d.len() >= 2 && d.chars().all(|c| c.is_ascii_digit())) {
        anyhow::bail!("--arch {arch}: expected sm_<major><minor>[a], e.g. sm_90a or sm_80");
    }
    Ok(())
}

/// `gla kernels ...` in a binary without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn run(_: &Cmd) -> Result<bool> {
    anyhow::bail!("this gla binary was built without GPU support; rebuild with `cargo build --release -p gla-cli --features cuda`")
}

//! Runs the GPU check rows and prints them (without fla's fixtures: `gla check --device cuda` is
//! the entry point); `--quick` skips the long and huge cases; `--bench` also times the kernels;
//! `--wide-only` runs only the wide chunked rows (K > 128 or V > 128, `gla_check::cuda::wide_check`).
//! Usage: `check [--quick] [--bench] [--wide-only]` (exit 1 on any failure, 2 when no GPU can be used).

use gla_check::cuda::{check, wide_check, CheckOptions};
use gla_check::{format_table, Row};
use gla_cuda::Cuda;

mod bench;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let cuda = match Cuda::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("check: {e}");
            std::process::exit(2);
        }
    };
    println!("device: {} ({})", cuda.name(), cuda.arch());
    let mut failed = false;
    if args.iter().any(|a| a == "--wide-only") {
        let failed = timed_check(|| {
            let mut rows = Vec::new();
            wide_check(&cuda, None, &mut rows).map(|()| rows)
        });
        std::process::exit(i32::from(failed));
    }
    if !args.iter().any(|a| a == "--bench-only") {
        let opts =
            if quick { CheckOptions { long: false, huge: false, repeat: true, ops: true, model: true } } else { CheckOptions::default() };
        failed = timed_check(|| check(&cuda, opts, None));
    }
    if args.iter().any(|a| a == "--bench" || a == "--bench-only") {
        if let Err(e) = bench::run(&cuda) {
            eprintln!("bench: {e}");
            failed = true;
        }
    }
    std::process::exit(i32::from(failed));
}

/// Runs a check, prints its table (or its error) and how long it took; true when anything failed.
fn timed_check<E: std::fmt::Display>(run: impl FnOnce() -> Result<Vec<Row>, E>) -> bool {
    let t0 = std::time::Instant::now();
    let failed = match run() {
        Ok(rows) => {
            print!("{}", format_table(&rows));
            rows.iter().any(|r| !r.pass)
        }
        Err(e) => {
            eprintln!("check: {e}");
            true
        }
    };
    println!("check took {:.1} s", t0.elapsed().as_secs_f64());
    failed
}

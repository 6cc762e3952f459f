//! Times the chunked forward and forward+backward at bf16 through `gla_cuda::bench`.

use std::sync::Arc;

use gla_cuda::bench::{bench_ops, default_shapes, format_rows, hbm_rate};
use gla_cuda::{Cuda, Result};

pub fn run(cuda: &Arc<Cuda>) -> Result<()> {
    let rows = bench_ops(cuda, &default_shapes(), 5, true, true)?;
    print!("{}", format_rows(&rows, hbm_rate(cuda)?));
    Ok(())
}

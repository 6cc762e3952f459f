//! gla-check: the test kit behind `gla check`, outside the library crates' public API.
//!
//! - [`cases`]: the shared case table (DESIGN.md section 4), its seeded data and the error
//!   measure; also the tests' of gla-cpu (a dev-dependency: integration tests only).
//! - [`tol`]: every tolerance, with its reason (op rows per storage, model rows with the bf16
//!   floor).
//! - [`row`]: the one [`Row`] type of every check, its table ([`format_table`]) and JSON.
//! - [`runner`]: the case table on any list of [`gla_core::op::GlaOp<f32>`] paths against the f64
//!   oracle.
//! - [`cpu`]: the CPU paths' rows.
//! - [`attn`]: the softmax attention case table and its data.
//! - [`attn_cpu`]: the attention table on the CPU paths, and their typed-error rows.
//! - [`bidir`]: the bidirectional scan's (ViG) case table, its data and runner; [`bidir_cpu`]:
//!   its CPU rows and typed-error rows.
//! - [`delta`]: the delta-rule family's case table, its data and comparison.
//! - [`delta_cpu`]: the delta table on the CPU's delta paths, and their typed-error rows.
//! - `cuda` (feature `cuda`): the GPU's rows: the case table on `CudaGla` (f32 and bf16), the
//!   wide, long (T = 65536), huge (> 2^31 elements) and repeat rows, the GPU language model
//!   against the CPU model and fla's fixtures, and generation.

pub mod attn;
pub mod attn_cpu;
pub mod bidir;
pub mod bidir_cpu;
pub mod cases;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod delta;
pub mod delta_cpu;
pub mod row;
pub mod runner;
pub mod tol;

pub use row::{format_table, Row};

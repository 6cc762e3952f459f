//! The CPU rows: the case table on every CPU path (f32) against the f64 oracle.

use gla_cpu::{Chunked, FusedRecurrent, Naive, Schedule};

use crate::cases::cases;
use crate::row::Row;
use crate::runner::{run_table, Path, Storage, TABLE_SEED};
use crate::tol;

/// The CPU's f32 paths: the naive oracle in f32, the fused recurrent path, the chunked path per
/// sequence and per chunk.
const SEQ: Chunked = Chunked { schedule: Schedule::PerSequence };
const PAR: Chunked = Chunked { schedule: Schedule::PerChunk };

/// The case table (cases whose name contains `filter`) on [`Naive`], [`FusedRecurrent`] and
/// [`Chunked`] with both schedules, forward and backward, in f32 with [`tol::CPU_F32`].
///
/// # Errors
/// An invalid case spec (the paths' own failures are `error` rows).
pub fn rows(filter: Option<&str>) -> gla_core::Result<Vec<Row>> {
    let path =
        |op: &'static dyn gla_core::op::GlaOp<f32>| Path { label: op.name(), storage: Storage::F32, op, tol: tol::CPU_F32, backward: true };
    let paths = [path(&Naive), path(&FusedRecurrent), path(&SEQ), path(&PAR)];
    let mut out = Vec::new();
    run_table(&cases(), TABLE_SEED, filter, &paths, &mut out)?;
    Ok(out)
}

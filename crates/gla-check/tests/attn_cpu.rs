//! The attention table on every CPU path and the typed-error rows: all must pass.

use gla_check::row::{failed, format_table};

#[test]
fn attn_table_and_errors_pass() {
    let rows = gla_check::attn_cpu::rows(None).unwrap();
    assert!(rows.len() > 100, "{} rows", rows.len());
    assert_eq!(failed(&rows), 0, "{}", format_table(&rows));
}

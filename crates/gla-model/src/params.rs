//! Parameters: ONE table of (checkpoint name, shape, init) per model (the contract types live in
//! gla-core, [`gla_core::params`]); each module adds its rows through [`Table`] and
//! [`crate::layout::Layout::new`] walks the model in arena order.

pub use gla_core::params::{Init, ParamId, ParamSpec, Table};

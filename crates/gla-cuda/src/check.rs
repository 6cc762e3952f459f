//! `check`: placeholder

//! keel's monitor (work in progress).
#![forbid(unsafe_code)]

pub mod wire;

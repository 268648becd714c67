//! The `pgbranch` binary's parts, as a library so integration tests and benchmarks
//! drive postgres exactly the way the CLI does.

pub mod api;
pub mod client;
mod clock;
pub mod clone;
pub mod daemon;
pub mod demo;
mod files;
pub mod layout;
pub mod log_writer;
pub mod output;
pub mod pii;
pub mod point_in_time;
mod procs;
mod source_tls;
pub mod store_config;
pub mod sys;
pub use pgbranch_replicator::pg;

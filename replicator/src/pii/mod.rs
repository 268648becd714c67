//! `pgbranch pii scan`: finding likely PII in a source database and writing a transform
//! config that covers every replicated column. [`detect`] holds the classifiers (by
//! column name, type and sampled values), [`mod@scan`] samples the source, and
//! [`config_writer`] picks a transformer per column and writes the YAML.

pub mod config_writer;
pub mod detect;
pub mod scan;

pub use config_writer::{choose, to_yaml, Choice};
pub use detect::{Guess, PiiKind, TypeClass};
pub use scan::{scan, ColumnReport, ScanError, ScanReport, TableReport};

#[cfg(test)]
mod tests;

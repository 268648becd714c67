//! pgbranch-replicator: everything that talks to postgres — running stock postgres
//! binaries as the right user ([`pg`]), checking and following a source database
//! ([`source`], [`basebackup`], [`follower`]), reading its replicated schema
//! ([`catalog`]) and scanning it for PII ([`pii`]), over TLS as the URL says ([`tls`]); [`sys`] holds the crate's only `unsafe`.
//! Nothing here knows about FUSE.

pub mod basebackup;
pub mod catalog;
pub mod civil_date;
pub mod follower;
pub mod logical;
pub mod pg;
pub mod pg_find;
pub mod pgconf;
pub mod pii;
pub mod source;
pub mod sys;
pub mod tablespace;
pub mod tls;
pub mod transform;

//! The logical follower: streams a source database into an ordinary read-write postgres
//! (`main`) with every configured column masked in memory before it is written.
//!
//! - [`wire`]: the client side of the streaming replication protocol ([`lsn`]: positions);
//! - [`pgoutput`]: decoding the change messages of the `pgoutput` plugin;
//! - [`schema`]: roles and schema from the source with stock `pg_dump`;
//! - [`copy`]: the consistent initial copy (one exported snapshot, tables in parallel);
//! - [`apply`]: turning decoded, masked changes into SQL on main;
//! - [`stream`]: the change stream loop, exactly once through a replication origin.

pub mod apply;
pub mod copy;
pub mod lsn;
pub mod pgoutput;
pub mod schema;
pub mod stream;
pub mod wire;

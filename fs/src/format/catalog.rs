//! Catalog (`catalog.redb`) tables and record encoding.
//!
//! `branches`: name (`&str`) → `version u8 | postcard BranchRecord`; `meta`: `&str` →
//! `u64` (only `"next_id"`). A record of a version this build does not read is an
//! error naming the record, never a default.

use redb::TableDefinition;
use serde::de::SeqAccess;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tags::*;
use super::{check_version, postcard_after, postcard_exact, tagged, FormatError};
use crate::catalog::{BranchRecord, Kind};

pub const BRANCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("branches");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const META_NEXT_ID: &str = "next_id";

pub const RECORD_VERSION: u8 = 1;

pub fn encode_record(rec: &BranchRecord) -> Result<Vec<u8>, FormatError> {
    postcard_after(vec![RECORD_VERSION], rec, "catalog record")
}

pub fn decode_record(bytes: &[u8]) -> Result<BranchRecord, FormatError> {
    let Some((&version, body)) = bytes.split_first() else { return Err(FormatError::malformed("catalog record", "empty")) };
    check_version("catalog record", u32::from(version), u32::from(RECORD_VERSION))?;
    postcard_exact(body, "catalog record")
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tag = match self {
            Kind::Branch => KIND_BRANCH,
            Kind::Snapshot => KIND_SNAPSHOT,
        };
        tagged::serialize(s, tag, &())
    }
}

impl tagged::TaggedEnum for Kind {
    const NAME: &'static str = "branch kind";
    fn decode_variant<'de, A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Self, A::Error> {
        let kind = match tag {
            KIND_BRANCH => Kind::Branch,
            KIND_SNAPSHOT => Kind::Snapshot,
            _ => return Err(tagged::unknown(Self::NAME, tag)),
        };
        let () = tagged::payload(seq)?;
        Ok(kind)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

//! Catalog (`catalog.redb`) tables and record encoding.
//!
//! `branches`: name (`&str`) → `version u8 | postcard BranchRecord`; `meta`: `&str` →
//! `u64` (only `"next_id"`); `history`: `(branch id u64, cut µs u64)` → `version u8 |
//! postcard (root [u8; 32], changed_bytes u64, app Option<(position u64, last commit µs
//! Option<u64>)>)` (version 2; version 1 lacks `app`), one retained point each;
//! `retention`: branch id → window in seconds (absent: the store's default). A record of
//! a version this build does not read is an error naming the record, never a default.

use redb::TableDefinition;
use serde::de::SeqAccess;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tags::*;
use super::{check_version, check_version_in, postcard_after, postcard_exact, tagged, FormatError};
use crate::block::Hash;
use crate::catalog::{BranchRecord, Kind};
use crate::history::{AppPosition, Point};

pub const BRANCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("branches");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const META_NEXT_ID: &str = "next_id";
pub const HISTORY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("history");
pub const RETENTION: TableDefinition<u64, u64> = TableDefinition::new("retention");
/// 2 added the program's position (`history::AppPosition`); 1 is still read.
pub const POINT_VERSION: u8 = 2;
pub const OLDEST_POINT_VERSION: u8 = 1;

pub const RECORD_VERSION: u8 = 1;

pub fn encode_record(rec: &BranchRecord) -> Result<Vec<u8>, FormatError> {
    postcard_after(vec![RECORD_VERSION], rec, "catalog record")
}

pub fn decode_record(bytes: &[u8]) -> Result<BranchRecord, FormatError> {
    let Some((&version, body)) = bytes.split_first() else { return Err(FormatError::malformed("catalog record", "empty")) };
    check_version("catalog record", u32::from(version), u32::from(RECORD_VERSION))?;
    postcard_exact(body, "catalog record")
}

/// A version-2 point's body: root, changed bytes, (position, last commit µs).
type PointV2 = ([u8; 32], u64, Option<(u64, Option<u64>)>);

/// A history point's value (its key holds the branch id and the time).
pub fn encode_point(p: &Point) -> Result<Vec<u8>, FormatError> {
    let app = p.app.map(|a| (a.position, a.last_commit_unix_micros));
    postcard_after(vec![POINT_VERSION], &(p.root.0, p.changed_bytes, app), "history point")
}

pub fn decode_point(at_unix_micros: u64, bytes: &[u8]) -> Result<Point, FormatError> {
    let Some((&version, body)) = bytes.split_first() else { return Err(FormatError::malformed("history point", "empty")) };
    check_version_in("history point", u32::from(version), u32::from(OLDEST_POINT_VERSION), u32::from(POINT_VERSION))?;
    let (root, changed_bytes, app) = if version == 1 {
        let (root, changed_bytes): ([u8; 32], u64) = postcard_exact(body, "history point")?;
        (root, changed_bytes, None)
    } else {
        let (root, changed_bytes, app): PointV2 = postcard_exact(body, "history point")?;
        (root, changed_bytes, app)
    };
    let app = app.map(|(position, last_commit_unix_micros)| AppPosition { position, last_commit_unix_micros });
    Ok(Point { at_unix_micros, root: Hash(root), changed_bytes, app })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_point_is_still_read_and_version_2_round_trips() {
        let root = Hash([7; 32]);
        let v1 = postcard_after(vec![1], &(root.0, 4096u64), "history point").unwrap();
        assert_eq!(decode_point(5, &v1).unwrap(), Point { at_unix_micros: 5, root, changed_bytes: 4096, app: None });
        let p = Point {
            at_unix_micros: 9,
            root,
            changed_bytes: 1,
            app: Some(AppPosition { position: 0x1_6000_0028, last_commit_unix_micros: Some(3) }),
        };
        assert_eq!(decode_point(9, &encode_point(&p).unwrap()).unwrap(), p);
        let mut too_new = encode_point(&p).unwrap();
        too_new[0] = 3;
        assert!(decode_point(9, &too_new).unwrap_err().to_string().contains("history point"));
    }
}

//! Intent-log segment layout: a 24-byte header, then records.
//!
//! Header: `"PGBRLOG\0" | version u32 LE | seq u64 LE | crc32 u32 LE` (crc of the 20
//! bytes before it); `seq` must equal the number in the segment's file name.
//! Record (version 2): `body length u32 LE | crc32(seq u64 LE ‖ durable u64 LE ‖ body)
//! u32 LE | durable u64 LE | body`, where `durable` is the segment offset up to which
//! the segment was known durable (an fdatasync of it had returned) when the record was
//! appended: a record that fails its crc below a later record's `durable` is damage,
//! not a torn tail. Version 1 (still replayed) had no `durable`: `length | crc32(seq ‖
//! body) | body`. The body
//! one [`Op`]: `tag u8` (see [`super::tags`]), then for a write a flat layout (`ino u64
//! LE | offset u64 LE | secs i64 LE | nanos u32 LE | data`), for every other op the
//! postcard encoding of its fields, in the order listed in [`encode_op`]. Op tags are
//! only ever added (a write-blocks op, tag 10, came with bulk writes): an older
//! pgbranch refuses a log holding a tag it does not know, naming it.

use serde::de::SeqAccess;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tags::*;
use super::{decode_header_in, encode_header, postcard_after, postcard_exact, tagged, FormatError};
use crate::node::Time;
use crate::op::{NewKind, Op, SetAttr};

pub const SEGMENT_MAGIC: &[u8; 8] = b"PGBRLOG\0";
/// The version this build writes.
pub const SEGMENT_VERSION: u32 = 2;
/// The oldest version this build replays.
pub const OLDEST_SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// `length | crc | durable` before each record body.
pub const RECORD_FRAME: usize = 16;
/// `length | crc` before each record body of a version-1 segment.
const RECORD_FRAME_V1: usize = 8;
const WRITE_HEADER: usize = 29;

pub fn segment_header(seq: u64) -> Vec<u8> {
    encode_header(SEGMENT_MAGIC, SEGMENT_VERSION, &seq.to_le_bytes())
}

/// Checks a segment's header against the number in its file name; returns its version.
pub fn check_segment_header(bytes: &[u8], seq: u64) -> Result<u32, FormatError> {
    let (version, extra) = decode_header_in(bytes, SEGMENT_MAGIC, OLDEST_SEGMENT_VERSION, SEGMENT_VERSION, "intent-log segment")?;
    let mut found = [0u8; 8];
    found.copy_from_slice(extra);
    let found = u64::from_le_bytes(found);
    if found != seq {
        return Err(FormatError::malformed("intent-log segment", format!("its header says segment {found}, its file name {seq}")));
    }
    Ok(version)
}

fn record_crc(seq: u64, durable: Option<u64>, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    if let Some(durable) = durable {
        h.update(&durable.to_le_bytes());
    }
    h.update(body);
    h.finalize()
}

/// One whole record (frame and body) for segment `seq`, in one buffer: one pwrite.
/// `durable`: the offset up to which segment `seq` is known durable now.
pub fn encode_record(seq: u64, durable: u64, op: &Op) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![0u8; RECORD_FRAME];
    encode_op(op, &mut out)?;
    let body = &out[RECORD_FRAME..];
    let len = u32::try_from(body.len()).map_err(|_| FormatError::malformed("intent-log record", "op larger than 4 GiB"))?;
    let crc = record_crc(seq, Some(durable), body);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[8..16].copy_from_slice(&durable.to_le_bytes());
    Ok(out)
}

/// A record whose frame and crc hold: its body, its whole length, and (version 2) the
/// offset its segment was durable to when it was appended.
struct Frame<'a> {
    body: &'a [u8],
    len: usize,
    durable: Option<u64>,
}

/// The frame at the start of `bytes`, if it is whole and its crc holds.
fn frame(version: u32, seq: u64, bytes: &[u8]) -> Option<Frame<'_>> {
    let frame_len = if version >= 2 { RECORD_FRAME } else { RECORD_FRAME_V1 };
    let head = bytes.get(..frame_len)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let durable =
        (version >= 2).then(|| u64::from_le_bytes([head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15]]));
    let body = bytes.get(frame_len..frame_len.checked_add(len)?)?;
    if len == 0 || record_crc(seq, durable, body) != crc {
        return None;
    }
    Some(Frame { body, len: frame_len + len, durable })
}

/// The record at the start of `bytes` in segment `seq` (of format `version`):
/// `Ok(None)` at the end of the segment's valid records (too short, zero length, body
/// past the end, crc mismatch: a torn tail or stale bytes of a recycled file — unless
/// [`durable_record_after`] says otherwise); an error when the crc holds but the body
/// does not decode (damage, or an op written by a newer pgbranch). Returns the op and
/// the record's whole length.
pub fn read_record(version: u32, seq: u64, bytes: &[u8]) -> Result<Option<(Op, usize)>, FormatError> {
    match frame(version, seq, bytes) {
        Some(f) => Ok(Some((decode_op(f.body)?, f.len))),
        None => Ok(None),
    }
}

/// Replay of segment `seq` (`segment`: the whole file) ended at byte `end`. If the
/// record there has a plausible length and a later record, chained from it, says the
/// segment was durable past `end` when it was appended, the record at `end` had been
/// made durable and is damaged, not torn: returns that later record's offset. A torn
/// tail is never followed by such a record: nothing after the last fdatasync was
/// acknowledged, and records appended after it carry its offset. Version-1 segments
/// carry no offsets: None.
pub fn durable_record_after(version: u32, seq: u64, segment: &[u8], end: usize) -> Option<usize> {
    if version < 2 {
        return None;
    }
    let head = segment.get(end..end + RECORD_FRAME)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return None;
    }
    let mut pos = end.checked_add(RECORD_FRAME)?.checked_add(len)?;
    while let Some(f) = frame(version, seq, segment.get(pos..)?) {
        if f.durable.is_some_and(|d| d > end as u64) {
            return Some(pos);
        }
        pos += f.len;
    }
    None
}

/// Appends the body of `op` to `out`.
pub fn encode_op(op: &Op, out: &mut Vec<u8>) -> Result<(), FormatError> {
    match op {
        Op::Write { ino, offset, data, now } => {
            out.reserve(WRITE_HEADER + data.len());
            out.push(OP_WRITE);
            out.extend_from_slice(&ino.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&now.secs.to_le_bytes());
            out.extend_from_slice(&now.nanos.to_le_bytes());
            out.extend_from_slice(data);
            Ok(())
        }
        Op::Create { parent, name, ino, kind, mode, uid, gid, rdev, now } => {
            tagged_body(out, OP_CREATE, &(parent, name, ino, kind, mode, uid, gid, rdev, now))
        }
        Op::Link { ino, parent, name, now } => tagged_body(out, OP_LINK, &(ino, parent, name, now)),
        Op::Unlink { parent, name, dir, now } => tagged_body(out, OP_UNLINK, &(parent, name, dir, now)),
        Op::Rename { parent, name, new_parent, new_name, flags, now } => {
            tagged_body(out, OP_RENAME, &(parent, name, new_parent, new_name, flags, now))
        }
        Op::SetAttr { ino, attr, now } => tagged_body(out, OP_SET_ATTR, &(ino, attr, now)),
        Op::Fallocate { ino, offset, len, mode, now } => tagged_body(out, OP_FALLOCATE, &(ino, offset, len, mode, now)),
        Op::SetXattr { ino, name, value, flags, now } => tagged_body(out, OP_SET_XATTR, &(ino, name, value, flags, now)),
        Op::RemoveXattr { ino, name, now } => tagged_body(out, OP_REMOVE_XATTR, &(ino, name, now)),
        Op::WriteBlocks { ino, offset, head, blocks, tail, now } => {
            tagged_body(out, OP_WRITE_BLOCKS, &(ino, offset, head, blocks, tail, now))
        }
    }
}

/// Decodes one record body.
pub fn decode_op(bytes: &[u8]) -> Result<Op, FormatError> {
    let Some((&tag, body)) = bytes.split_first() else { return Err(FormatError::malformed("op", "empty body")) };
    Ok(match tag {
        OP_WRITE => {
            if body.len() < WRITE_HEADER - 1 {
                return Err(FormatError::malformed("write op", format!("{} bytes, shorter than its header", bytes.len())));
            }
            let u64_at = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[i..i + 8]);
                u64::from_le_bytes(b)
            };
            let nanos = u32::from_le_bytes([body[24], body[25], body[26], body[27]]);
            Op::Write { ino: u64_at(0), offset: u64_at(8), now: Time { secs: u64_at(16) as i64, nanos }, data: body[28..].to_vec() }
        }
        OP_CREATE => {
            let (parent, name, ino, kind, mode, uid, gid, rdev, now) = postcard_exact(body, "create op")?;
            Op::Create { parent, name, ino, kind, mode, uid, gid, rdev, now }
        }
        OP_LINK => {
            let (ino, parent, name, now) = postcard_exact(body, "link op")?;
            Op::Link { ino, parent, name, now }
        }
        OP_UNLINK => {
            let (parent, name, dir, now) = postcard_exact(body, "unlink op")?;
            Op::Unlink { parent, name, dir, now }
        }
        OP_RENAME => {
            let (parent, name, new_parent, new_name, flags, now) = postcard_exact(body, "rename op")?;
            Op::Rename { parent, name, new_parent, new_name, flags, now }
        }
        OP_SET_ATTR => {
            let (ino, attr, now): (u64, SetAttr, Time) = postcard_exact(body, "setattr op")?;
            Op::SetAttr { ino, attr, now }
        }
        OP_FALLOCATE => {
            let (ino, offset, len, mode, now) = postcard_exact(body, "fallocate op")?;
            Op::Fallocate { ino, offset, len, mode, now }
        }
        OP_SET_XATTR => {
            let (ino, name, value, flags, now) = postcard_exact(body, "setxattr op")?;
            Op::SetXattr { ino, name, value, flags, now }
        }
        OP_REMOVE_XATTR => {
            let (ino, name, now) = postcard_exact(body, "removexattr op")?;
            Op::RemoveXattr { ino, name, now }
        }
        OP_WRITE_BLOCKS => {
            let (ino, offset, head, blocks, tail, now) = postcard_exact(body, "write-blocks op")?;
            Op::WriteBlocks { ino, offset, head, blocks, tail, now }
        }
        _ => return Err(FormatError::malformed("op", format!("unknown op tag {tag} (written by a newer pgbranch?)"))),
    })
}

/// Appends `tag`, then the postcard encoding of an op's fields.
fn tagged_body<T: Serialize>(out: &mut Vec<u8>, tag: u8, fields: &T) -> Result<(), FormatError> {
    out.push(tag);
    *out = postcard_after(std::mem::take(out), fields, "op")?;
    Ok(())
}

impl Serialize for NewKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NewKind::File => tagged::serialize(s, NEW_FILE, &()),
            NewKind::Dir => tagged::serialize(s, NEW_DIR, &()),
            NewKind::Symlink(target) => tagged::serialize(s, NEW_SYMLINK, target),
            NewKind::Special => tagged::serialize(s, NEW_SPECIAL, &()),
        }
    }
}

impl tagged::TaggedEnum for NewKind {
    const NAME: &'static str = "new inode kind";
    fn decode_variant<'de, A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Self, A::Error> {
        let unit = |seq: &mut A, kind| tagged::payload::<A, ()>(seq).map(|()| kind);
        match tag {
            NEW_FILE => unit(seq, NewKind::File),
            NEW_DIR => unit(seq, NewKind::Dir),
            NEW_SYMLINK => Ok(NewKind::Symlink(tagged::payload(seq)?)),
            NEW_SPECIAL => unit(seq, NewKind::Special),
            _ => Err(tagged::unknown(Self::NAME, tag)),
        }
    }
}

impl<'de> Deserialize<'de> for NewKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

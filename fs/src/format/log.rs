//! Intent-log segment layout: a 24-byte header, then records.
//!
//! Header: `"PGBRLOG\0" | version u32 LE | seq u64 LE | crc32 u32 LE` (crc of the 20
//! bytes before it); `seq` must equal the number in the segment's file name.
//! Record: `body length u32 LE | crc32(seq u64 LE ‖ body) u32 LE | body`, the body
//! one [`Op`]: `tag u8` (see [`super::tags`]), then for a write a flat layout (`ino u64
//! LE | offset u64 LE | secs i64 LE | nanos u32 LE | data`), for every other op the
//! postcard encoding of its fields, in the order listed in [`encode_op`].

use serde::de::SeqAccess;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tags::*;
use super::{decode_header, encode_header, postcard_after, postcard_exact, tagged, FormatError};
use crate::node::Time;
use crate::op::{NewKind, Op, SetAttr};

pub const SEGMENT_MAGIC: &[u8; 8] = b"PGBRLOG\0";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// `length | crc` before each record body.
pub const RECORD_FRAME: usize = 8;
const WRITE_HEADER: usize = 29;

pub fn segment_header(seq: u64) -> Vec<u8> {
    encode_header(SEGMENT_MAGIC, SEGMENT_VERSION, &seq.to_le_bytes())
}

/// Checks a segment's header against the number in its file name.
pub fn check_segment_header(bytes: &[u8], seq: u64) -> Result<(), FormatError> {
    let extra = decode_header(bytes, SEGMENT_MAGIC, SEGMENT_VERSION, "intent-log segment")?;
    let mut found = [0u8; 8];
    found.copy_from_slice(extra);
    let found = u64::from_le_bytes(found);
    if found != seq {
        return Err(FormatError::malformed("intent-log segment", format!("its header says segment {found}, its file name {seq}")));
    }
    Ok(())
}

fn record_crc(seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// One whole record (frame and body) for segment `seq`, in one buffer: one pwrite.
pub fn encode_record(seq: u64, op: &Op) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![0u8; RECORD_FRAME];
    encode_op(op, &mut out)?;
    let body = &out[RECORD_FRAME..];
    let len = u32::try_from(body.len()).map_err(|_| FormatError::malformed("intent-log record", "op larger than 4 GiB"))?;
    let crc = record_crc(seq, body);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The record at the start of `bytes` in segment `seq`: `Ok(None)` at the end of the
/// segment's valid records (too short, zero length, body past the end, crc mismatch:
/// a torn tail or stale bytes of a recycled file); an error when the crc holds but the
/// body does not decode (damage, or an op written by a newer pgbranch).
pub fn read_record(seq: u64, bytes: &[u8]) -> Result<Option<(Op, usize)>, FormatError> {
    let Some(frame) = bytes.get(..RECORD_FRAME) else { return Ok(None) };
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Some(body) = bytes.get(RECORD_FRAME..RECORD_FRAME + len) else { return Ok(None) };
    if len == 0 || record_crc(seq, body) != crc {
        return Ok(None);
    }
    Ok(Some((decode_op(body)?, RECORD_FRAME + len)))
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

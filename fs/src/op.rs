//! Mutations of a branch: the vocabulary of the intent log.
//!
//! Every change the filesystem makes to a branch is first expressed as an [`Op`] that
//! carries every value it needs (inode numbers, timestamps, owners), so that applying
//! the same ops to the same committed tree always yields the same state: that is what
//! makes replaying the intent log after a crash exact.

use serde::{Deserialize, Serialize};

use crate::node::Time;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NewKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    /// fifo, socket or device node: the type is in `mode`.
    Special,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    Create { parent: u64, name: Vec<u8>, ino: u64, kind: NewKind, mode: u32, uid: u32, gid: u32, rdev: u32, now: Time },
    Link { ino: u64, parent: u64, name: Vec<u8>, now: Time },
    Unlink { parent: u64, name: Vec<u8>, dir: bool, now: Time },
    Rename { parent: u64, name: Vec<u8>, new_parent: u64, new_name: Vec<u8>, flags: u32, now: Time },
    SetAttr { ino: u64, attr: SetAttr, now: Time },
    Write { ino: u64, offset: u64, data: Vec<u8>, now: Time },
    Fallocate { ino: u64, offset: u64, len: u64, mode: i32, now: Time },
    SetXattr { ino: u64, name: Vec<u8>, value: Vec<u8>, flags: i32, now: Time },
    RemoveXattr { ino: u64, name: Vec<u8>, now: Time },
}

const TAG_WRITE: u8 = 1;
const TAG_OTHER: u8 = 2;

impl Op {
    /// Encodes the op for the intent log. Writes get a flat layout: they are most of the
    /// log's volume and their payload should be copied, not serialized byte by byte.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Op::Write { ino, offset, data, now } => {
                let mut out = Vec::with_capacity(29 + data.len());
                out.push(TAG_WRITE);
                out.extend_from_slice(&ino.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&now.secs.to_le_bytes());
                out.extend_from_slice(&now.nanos.to_le_bytes());
                out.extend_from_slice(data);
                out
            }
            other => {
                let mut out = vec![TAG_OTHER];
                out.extend_from_slice(&postcard::to_allocvec(other).expect("ops always serialize"));
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Op> {
        match *bytes.first()? {
            TAG_WRITE if bytes.len() >= 29 => {
                let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
                Some(Op::Write {
                    ino: u64_at(1),
                    offset: u64_at(9),
                    now: Time { secs: u64_at(17) as i64, nanos: u32::from_le_bytes(bytes[25..29].try_into().unwrap()) },
                    data: bytes[29..].to_vec(),
                })
            }
            TAG_OTHER => postcard::from_bytes(&bytes[1..]).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_roundtrip() {
        let now = Time { secs: 1_700_000_000, nanos: 5 };
        let w = Op::Write { ino: 7, offset: 8192, data: vec![1, 2, 3], now };
        match Op::decode(&w.encode()).unwrap() {
            Op::Write { ino, offset, data, now: t } => {
                assert_eq!((ino, offset, data, t), (7, 8192, vec![1, 2, 3], now))
            }
            other => panic!("{other:?}"),
        }
        let r = Op::Rename { parent: 1, name: b"a".to_vec(), new_parent: 2, new_name: b"b".to_vec(), flags: 0, now };
        assert!(matches!(Op::decode(&r.encode()), Some(Op::Rename { new_parent: 2, .. })));
    }
}

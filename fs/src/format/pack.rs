//! Pack file layout: a 16-byte header, then object records back to back.
//!
//! Header: `"PGBRPACK" | version u32 LE | crc32 u32 LE` (crc of the 12 bytes before it).
//! Record: `hash (32) | payload length u32 LE | payload` (the payload is `block::encode`d).

use super::{decode_header, encode_header, FormatError};
use crate::block::Hash;

pub const PACK_MAGIC: &[u8; 8] = b"PGBRPACK";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 16;
/// Bytes before each record's payload.
pub const RECORD_HEADER: u64 = 36;

pub fn pack_header() -> Vec<u8> {
    encode_header(PACK_MAGIC, PACK_VERSION, &[])
}

pub fn check_pack_header(bytes: &[u8]) -> Result<(), FormatError> {
    decode_header(bytes, PACK_MAGIC, PACK_VERSION, "pack").map(|_| ())
}

pub fn record_header(hash: &Hash, payload_len: u32) -> [u8; RECORD_HEADER as usize] {
    let mut out = [0u8; RECORD_HEADER as usize];
    out[..32].copy_from_slice(&hash.0);
    out[32..].copy_from_slice(&payload_len.to_le_bytes());
    out
}

pub fn parse_record_header(bytes: &[u8; RECORD_HEADER as usize]) -> (Hash, u32) {
    let mut h = [0u8; 32];
    h.copy_from_slice(&bytes[..32]);
    (Hash(h), u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]))
}

//! Blocks and object hashes: the unit of content addressing.
//!
//! Every object in the store (file data blocks and tree nodes alike) is named by the
//! blake3 hash of its uncompressed bytes and stored compressed. Decoding verifies the
//! hash, so damaged bytes are reported as damage, never returned as data.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Size of a file data block: postgres' BLCKSZ, so one page maps to one block.
pub const BLOCK_SIZE: usize = 8192;

/// The blake3 hash naming one stored object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

use crate::format::tags::{CODEC_LZ4, CODEC_RAW};

/// True when every byte is zero: such blocks are holes and never stored.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    // OR-folding fixed chunks vectorizes; an early exit per chunk keeps data blocks cheap.
    bytes.chunks(64).all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Compresses `bytes` for storage; falls back to raw when lz4 does not help.
pub fn encode(bytes: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size(bytes);
    if compressed.len() + 1 < bytes.len() {
        let mut out = Vec::with_capacity(compressed.len() + 1);
        out.push(CODEC_LZ4);
        out.extend_from_slice(&compressed);
        out
    } else {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        out.push(CODEC_RAW);
        out.extend_from_slice(bytes);
        out
    }
}

/// Why a stored payload could not be turned back into its object.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("object {0} is damaged: content does not match its hash")]
    HashMismatch(Hash),
    #[error("object {0} is damaged: cannot decompress ({1})")]
    Corrupt(Hash, String),
}

/// Decodes a stored payload and checks that it really is the object named `hash`.
pub fn decode(hash: &Hash, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let bytes = match payload.first() {
        Some(&CODEC_RAW) => payload[1..].to_vec(),
        Some(&CODEC_LZ4) => {
            lz4_flex::block::decompress_size_prepended(&payload[1..]).map_err(|e| DecodeError::Corrupt(*hash, e.to_string()))?
        }
        _ => return Err(DecodeError::Corrupt(*hash, "unknown codec".into())),
    };
    if Hash::of(&bytes) != *hash {
        return Err(DecodeError::HashMismatch(*hash));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let data: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 7) as u8).collect();
        let h = Hash::of(&data);
        let mut enc = encode(&data);
        assert!(enc.len() < data.len() / 4, "repetitive data compresses");
        assert_eq!(decode(&h, &enc).unwrap(), data);
        let last = enc.len() - 1;
        enc[last] ^= 0xff;
        assert!(decode(&h, &enc).is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; BLOCK_SIZE]));
        let mut b = [0u8; BLOCK_SIZE];
        b[BLOCK_SIZE - 1] = 1;
        assert!(!is_zero(&b));
    }
}

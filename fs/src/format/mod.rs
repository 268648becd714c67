//! Everything pgbranch persists, byte by byte: magic numbers, versions and encodings.
//!
//! This module is the only place that decides how a persisted value looks on disk.
//! Every other module calls it instead of a serializer, so a change of format is a
//! change here, under the golden-bytes tests in `golden.rs`:
//!
//! - [`store_file`]: `data/FORMAT`, the store's format version, checked first on open;
//! - [`pack`]: the pack file header and the object record framing;
//! - [`log`]: the intent-log segment header, record framing and [`crate::op::Op`] encoding;
//! - [`node`]: tree nodes, each with a kind tag and a version byte;
//! - [`catalog`]: catalog tables and records, versioned;
//! - [`index`]: the object index table.
//!
//! Every persisted enum has explicit numeric tags, declared as constants in [`tags`];
//! postcard encodes only the fields of a variant, never its position in the Rust type,
//! so reordering a variant cannot silently reinterpret old data.

pub mod catalog;
pub(crate) mod index;
pub mod log;
pub(crate) mod node;
pub(crate) mod pack;
pub mod store_file;
pub(crate) mod tags;

mod tagged;

#[cfg(test)]
mod golden;

/// Why persisted bytes could not be read. Callers add the file (and offset) it was in.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a pgbranch {what} (bad magic)")]
    BadMagic { what: &'static str },
    #[error("{what} format version {found}; this pgbranch reads up to {supported}: upgrade pgbranch")]
    TooNew { what: &'static str, found: u32, supported: u32 },
    #[error("{what} format version {found} is not one this pgbranch reads (it reads {supported})")]
    Unsupported { what: &'static str, found: u32, supported: u32 },
    #[error("{what} header checksum does not match (the header is damaged)")]
    BadChecksum { what: &'static str },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: &'static str, reason: String },
}

impl FormatError {
    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> FormatError {
        FormatError::Malformed { what, reason: reason.to_string() }
    }
}

/// Checks a version read from disk against the one this build writes (and reads).
pub(crate) fn check_version(what: &'static str, found: u32, supported: u32) -> Result<(), FormatError> {
    check_version_in(what, found, supported, supported)
}

/// Checks a version read from disk against the range this build reads: a format that
/// changed keeps its reader for the old version, so `oldest` stays where it was.
pub(crate) fn check_version_in(what: &'static str, found: u32, oldest: u32, newest: u32) -> Result<(), FormatError> {
    if found > newest {
        return Err(FormatError::TooNew { what, found, supported: newest });
    }
    if found < oldest {
        return Err(FormatError::Unsupported { what, found, supported: newest });
    }
    Ok(())
}

/// postcard-encodes `value` after `prefix` bytes.
pub(crate) fn postcard_after<T: serde::Serialize + ?Sized>(prefix: Vec<u8>, value: &T, what: &'static str) -> Result<Vec<u8>, FormatError> {
    postcard::to_extend(value, prefix).map_err(|e| FormatError::malformed(what, e))
}

/// Decodes a postcard body that must use every byte.
pub(crate) fn postcard_exact<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, FormatError> {
    tagged::take_unknown_tag();
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| match tagged::take_unknown_tag() {
        Some(unknown) => FormatError::malformed(what, unknown),
        None => FormatError::malformed(what, e),
    })?;
    if !rest.is_empty() {
        return Err(FormatError::malformed(what, format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// A fixed file header: `magic (8) | version u32 LE | [extra] | crc32 u32 LE` where the
/// crc covers everything before it.
pub(crate) fn encode_header(magic: &[u8; 8], version: u32, extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + extra.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(extra);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a header made by [`encode_header`] (`bytes` is exactly its length) and
/// returns its `extra` bytes.
pub(crate) fn decode_header<'a>(bytes: &'a [u8], magic: &[u8; 8], supported: u32, what: &'static str) -> Result<&'a [u8], FormatError> {
    decode_header_in(bytes, magic, supported, supported, what).map(|(_, extra)| extra)
}

/// [`decode_header`] for a format whose versions `oldest..=newest` this build reads:
/// returns the version found and the `extra` bytes.
pub(crate) fn decode_header_in<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    oldest: u32,
    newest: u32,
    what: &'static str,
) -> Result<(u32, &'a [u8]), FormatError> {
    if bytes.len() < 16 || &bytes[..8] != magic {
        return Err(FormatError::BadMagic { what });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(FormatError::BadChecksum { what });
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    check_version_in(what, version, oldest, newest)?;
    Ok((version, &body[12..]))
}

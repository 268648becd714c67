//! Decoding the messages of the `pgoutput` plugin, protocol version 1 (what a
//! PostgreSQL 10..17 server sends for `proto_version '1'` without streaming of
//! in-progress transactions), with values in text format. One XLogData payload is
//! one message; malformed or truncated input is an error, never a panic.

use super::wire::Lsn;

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value that did not change: the server does not resend it.
    UnchangedToast,
    Text(String),
}

pub type Tuple = Vec<Datum>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelColumn {
    /// Part of the replica identity (usually the primary key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub schema: String,
    pub name: String,
    /// `b'd'` default (primary key), `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    pub columns: Vec<RelColumn>,
}

/// The old row of an update or delete: only the replica identity columns (the rest
/// are `Null`), or the whole row with `REPLICA IDENTITY FULL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    Key(Tuple),
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogicalMsg {
    Begin {
        final_lsn: Lsn,
        commit_time_us: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_us: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        id: u32,
        schema: String,
        name: String,
    },
    Insert {
        rel: u32,
        new: Tuple,
    },
    /// `old` is sent only when a replica identity column changed (`Key`) or the
    /// table has `REPLICA IDENTITY FULL`.
    Update {
        rel: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        rel: u32,
        old: OldTuple,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        rels: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput: {0}")]
pub struct DecodeError(pub String);

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The message being decoded, for error messages.
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> DecodeError {
        DecodeError(format!("{} message: {what} at byte {} of {}", self.msg, self.pos, self.data.len()))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.data.len() - self.pos < n {
            return Err(self.err(&format!("truncated: {what} needs {n} bytes")));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }
    fn lsn(&mut self, what: &str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.u64(what)?))
    }

    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(self.err(&format!("truncated: {what} has no terminating NUL")));
        };
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| self.err(&format!("{what} is not UTF-8")))?;
        self.pos += end + 1;
        Ok(s.to_string())
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16("the column count")?;
        let mut tuple = Vec::with_capacity(n as usize);
        for _ in 0..n {
            tuple.push(match self.u8("a column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.i32("a value length")?;
                    let len = usize::try_from(len).map_err(|_| self.err(&format!("negative value length {len}")))?;
                    let bytes = self.take(len, "a value")?;
                    let text = std::str::from_utf8(bytes).map_err(|_| self.err("a text value is not UTF-8"))?;
                    Datum::Text(text.to_string())
                }
                b'b' => return Err(self.err("binary mode not requested, but a binary value arrived")),
                k => return Err(self.err(&format!("unknown column kind {:?}", k as char))),
            });
        }
        Ok(tuple)
    }

    fn finish(self, msg: LogicalMsg) -> Result<LogicalMsg, DecodeError> {
        if self.pos != self.data.len() {
            return Err(self.err(&format!("{} unexpected trailing bytes", self.data.len() - self.pos)));
        }
        Ok(msg)
    }
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(data: &[u8]) -> Result<LogicalMsg, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError("empty message".into()));
    };
    let msg = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' | b'E' | b'c' | b'A' => {
            return Err(DecodeError(format!("streamed-transaction message {:?}, but streaming was not requested", tag as char)))
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError(format!("two-phase message {:?}, but two-phase decoding was not requested", tag as char)))
        }
        t => return Err(DecodeError(format!("unknown message type {:?} (0x{t:02x})", t as char))),
    };
    let mut r = Reader { data, pos: 1, msg };
    let out = match tag {
        b'B' => LogicalMsg::Begin { final_lsn: r.lsn("the final LSN")?, commit_time_us: r.i64("the commit time")?, xid: r.u32("the xid")? },
        b'C' => LogicalMsg::Commit {
            flags: r.u8("the flags")?,
            commit_lsn: r.lsn("the commit LSN")?,
            end_lsn: r.lsn("the end LSN")?,
            commit_time_us: r.i64("the commit time")?,
        },
        b'O' => LogicalMsg::Origin { lsn: r.lsn("the origin LSN")?, name: r.cstr("the origin name")? },
        b'R' => {
            let id = r.u32("the relation id")?;
            let schema = r.cstr("the schema name")?;
            let name = r.cstr("the relation name")?;
            let replica_identity = r.u8("the replica identity")?;
            let n = r.u16("the column count")?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("the column flags")?;
                columns.push(RelColumn {
                    key: flags & 1 != 0,
                    name: r.cstr("a column name")?,
                    type_oid: r.u32("a column type")?,
                    type_mod: r.i32("a column type modifier")?,
                });
            }
            LogicalMsg::Relation(Relation { id, schema, name, replica_identity, columns })
        }
        b'Y' => LogicalMsg::Type { id: r.u32("the type id")?, schema: r.cstr("the schema name")?, name: r.cstr("the type name")? },
        b'I' => {
            let rel = r.u32("the relation id")?;
            match r.u8("the tuple kind")? {
                b'N' => LogicalMsg::Insert { rel, new: r.tuple()? },
                k => return Err(r.err(&format!("expected a new tuple 'N', got {:?}", k as char))),
            }
        }
        b'U' => {
            let rel = r.u32("the relation id")?;
            let mut kind = r.u8("the tuple kind")?;
            let old = match kind {
                b'K' | b'O' => {
                    let t = r.tuple()?;
                    let old = if kind == b'K' { OldTuple::Key(t) } else { OldTuple::Full(t) };
                    kind = r.u8("the new tuple kind")?;
                    Some(old)
                }
                _ => None,
            };
            if kind != b'N' {
                return Err(r.err(&format!("expected a new tuple 'N', got {:?}", kind as char)));
            }
            LogicalMsg::Update { rel, old, new: r.tuple()? }
        }
        b'D' => {
            let rel = r.u32("the relation id")?;
            let old = match r.u8("the tuple kind")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                k => return Err(r.err(&format!("expected an old tuple 'K' or 'O', got {:?}", k as char))),
            };
            LogicalMsg::Delete { rel, old }
        }
        b'T' => {
            let n = r.u32("the relation count")?;
            let options = r.u8("the options")?;
            // Checked before allocating, so a corrupt count cannot ask for gigabytes.
            if (r.data.len() - r.pos) / 4 < n as usize {
                return Err(r.err(&format!("truncated: {n} relation ids announced")));
            }
            let rels = (0..n).map(|_| r.u32("a relation id")).collect::<Result<_, _>>()?;
            LogicalMsg::Truncate { cascade: options & 1 != 0, restart_identity: options & 2 != 0, rels }
        }
        b'M' => {
            let flags = r.u8("the flags")?;
            let lsn = r.lsn("the message LSN")?;
            let prefix = r.cstr("the prefix")?;
            let len = r.i32("the content length")?;
            let len = usize::try_from(len).map_err(|_| r.err(&format!("negative content length {len}")))?;
            let content = r.take(len, "the content")?.to_vec();
            LogicalMsg::Message { transactional: flags & 1 != 0, lsn, prefix, content }
        }
        _ => unreachable!("tag checked above"),
    };
    r.finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way the server's logicalrep_write_* functions do.
    struct B(Vec<u8>);
    impl B {
        fn new(tag: u8) -> B {
            B(vec![tag])
        }
        fn u8(mut self, v: u8) -> B {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> B {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> B {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> B {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> B {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> B {
            let mut b = self.u8(b't').u32(v.len() as u32);
            b.0.extend_from_slice(v.as_bytes());
            b
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.to_string())
    }

    /// Every strict prefix of a valid message must fail cleanly.
    fn assert_prefixes_fail(bytes: &[u8]) {
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded: {:?}", decode(&bytes[..n]));
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().0.contains("trailing"));
    }

    fn check(bytes: B, want: LogicalMsg) {
        assert_eq!(decode(&bytes.0).unwrap(), want);
        assert_prefixes_fail(&bytes.0);
    }

    #[test]
    fn begin_commit_origin() {
        check(
            B::new(b'B').u64(0x1_0000_0010).u64(-5i64 as u64).u32(742),
            LogicalMsg::Begin { final_lsn: Lsn(0x1_0000_0010), commit_time_us: -5, xid: 742 },
        );
        check(
            B::new(b'C').u8(0).u64(0x100).u64(0x130).u64(1_000_000),
            LogicalMsg::Commit { flags: 0, commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_time_us: 1_000_000 },
        );
        check(B::new(b'O').u64(7).s("upstream"), LogicalMsg::Origin { lsn: Lsn(7), name: "upstream".into() });
    }

    #[test]
    fn relation_and_type() {
        let bytes = B::new(b'R')
            .u32(16384)
            .s("public")
            .s("t")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .s("id")
            .u32(23)
            .u32(u32::MAX)
            .u8(0)
            .s("name")
            .u32(1043)
            .u32(68);
        check(
            bytes,
            LogicalMsg::Relation(Relation {
                id: 16384,
                schema: "public".into(),
                name: "t".into(),
                replica_identity: b'd',
                columns: vec![
                    RelColumn { key: true, name: "id".into(), type_oid: 23, type_mod: -1 },
                    RelColumn { key: false, name: "name".into(), type_oid: 1043, type_mod: 68 },
                ],
            }),
        );
        check(B::new(b'Y').u32(90000).s("public").s("mood"), LogicalMsg::Type { id: 90000, schema: "public".into(), name: "mood".into() });
    }

    #[test]
    fn insert_update_delete() {
        check(
            B::new(b'I').u32(5).u8(b'N').u16(4).text("1").u8(b'n').u8(b'u').text("héllo"),
            LogicalMsg::Insert { rel: 5, new: vec![text("1"), Datum::Null, Datum::UnchangedToast, text("héllo")] },
        );
        check(
            B::new(b'U').u32(5).u8(b'N').u16(2).text("1").u8(b'u'),
            LogicalMsg::Update { rel: 5, old: None, new: vec![text("1"), Datum::UnchangedToast] },
        );
        check(
            B::new(b'U').u32(5).u8(b'K').u16(2).text("1").u8(b'n').u8(b'N').u16(2).text("2").text(""),
            LogicalMsg::Update { rel: 5, old: Some(OldTuple::Key(vec![text("1"), Datum::Null])), new: vec![text("2"), text("")] },
        );
        check(
            B::new(b'U').u32(5).u8(b'O').u16(1).text("a").u8(b'N').u16(1).text("b"),
            LogicalMsg::Update { rel: 5, old: Some(OldTuple::Full(vec![text("a")])), new: vec![text("b")] },
        );
        check(B::new(b'D').u32(5).u8(b'K').u16(1).text("9"), LogicalMsg::Delete { rel: 5, old: OldTuple::Key(vec![text("9")]) });
        check(B::new(b'D').u32(5).u8(b'O').u16(1).u8(b'n'), LogicalMsg::Delete { rel: 5, old: OldTuple::Full(vec![Datum::Null]) });
    }

    #[test]
    fn truncate_and_message() {
        check(
            B::new(b'T').u32(2).u8(3).u32(10).u32(11),
            LogicalMsg::Truncate { cascade: true, restart_identity: true, rels: vec![10, 11] },
        );
        check(B::new(b'T').u32(0).u8(0), LogicalMsg::Truncate { cascade: false, restart_identity: false, rels: vec![] });
        let mut m = B::new(b'M').u8(1).u64(0x55).s("pgbranch").u32(3);
        m.0.extend_from_slice(&[0, 1, 0xff]);
        check(m, LogicalMsg::Message { transactional: true, lsn: Lsn(0x55), prefix: "pgbranch".into(), content: vec![0, 1, 0xff] });
    }

    #[test]
    fn bad_input_is_an_error() {
        let err = |b: B| decode(&b.0).unwrap_err().0;
        assert!(err(B::new(b'I').u32(5).u8(b'N').u16(1).u8(b'b').u32(1).u8(7)).contains("binary mode not requested"));
        assert!(err(B::new(b'I').u32(5).u8(b'N').u16(1).u8(b't').u32(2).u8(0xc3).u8(0x28)).contains("not UTF-8"));
        assert!(err(B::new(b'I').u32(5).u8(b'N').u16(1).u8(b't').u32(u32::MAX)).contains("negative"));
        assert!(err(B::new(b'I').u32(5).u8(b'N').u16(1).u8(b'x')).contains("unknown column kind"));
        assert!(err(B::new(b'I').u32(5).u8(b'K').u16(0)).contains("expected a new tuple"));
        assert!(err(B::new(b'U').u32(5).u8(b'K').u16(0).u8(b'K').u16(0)).contains("expected a new tuple"));
        assert!(err(B::new(b'D').u32(5).u8(b'N').u16(0)).contains("expected an old tuple"));
        assert!(err(B::new(b'T').u32(u32::MAX).u8(0)).contains("relation ids announced"));
        assert!(err(B::new(b'S').u32(1).u8(1)).contains("streaming was not requested"));
        assert!(err(B::new(b'Z')).contains("unknown message type"));
        assert!(decode(&[]).unwrap_err().0.contains("empty"));
        let text = err(B::new(b'B').u64(1));
        assert!(text.starts_with("Begin message: truncated"), "{text}");
    }
}

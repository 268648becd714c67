//! The consistent initial copy: every table is read under the one snapshot the slot
//! exported, masked row by row in memory, and written into main with `COPY`; several
//! tables at once. Raw values exist only in this process's buffers.

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use postgres::{Client, Config, NoTls};

use crate::catalog::quote_ident;
use crate::source::Source;
use crate::transform::{TablePlan, TransformConfig, Value};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("copying table {table}: {message}")]
    Table { table: String, message: String },
    #[error("connecting to {what}: {message}")]
    Connect { what: &'static str, message: String },
}

/// One table to copy: its config key (`schema.table`), its quoted name, its columns.
#[derive(Clone, Debug)]
pub struct CopyTable {
    pub qualified: String,
    pub quoted: String,
    pub columns: Vec<String>,
    /// Size on the source, to copy the largest tables first.
    pub bytes: i64,
}

/// What the copy did.
#[derive(Debug, Default)]
pub struct CopyStats {
    pub rows: u64,
    pub bytes_in: u64,
}

/// How values are masked: the config's transformers under the store's key.
#[derive(Clone, Copy)]
pub struct Masking<'a> {
    pub config: &'a TransformConfig,
    pub key: &'a [u8; 32],
}

/// Copies `tables` from the source (connected with its URL's TLS settings), under the
/// exported `snapshot`, into main. `rows` counts copied rows as it goes (for a progress bar).
pub fn copy_tables(
    source: &Source,
    snapshot: &str,
    main: &Config,
    tables: &[CopyTable],
    masking: Masking,
    workers: usize,
    rows: &AtomicU64,
) -> Result<CopyStats, CopyError> {
    let (config, key) = (masking.config, masking.key);
    let mut order: Vec<&CopyTable> = tables.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let next = AtomicUsize::new(0);
    let bytes_in = AtomicU64::new(0);
    let first_error: Mutex<Option<CopyError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(order.len().max(1)) {
            s.spawn(|| {
                let mut conns: Option<(Client, Client)> = None;
                loop {
                    if first_error.lock().unwrap().is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(table) = order.get(i) else { return };
                    let result = (|| {
                        if conns.is_none() {
                            conns = Some(open_pair(source, main)?);
                        }
                        let (src, dst) = conns.as_mut().unwrap();
                        copy_one(src, dst, snapshot, table, &config.plan(&table.qualified, &table.columns), key, rows)
                    })();
                    match result {
                        Ok(n) => {
                            bytes_in.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(CopyStats { rows: rows.load(Ordering::Relaxed), bytes_in: bytes_in.into_inner() })
}

fn open_pair(source: &Source, main: &Config) -> Result<(Client, Client), CopyError> {
    let src = source.connect().map_err(|e| CopyError::Connect { what: "the source", message: e.to_string() })?;
    let mut dst = main.connect(NoTls).map_err(|e| CopyError::Connect { what: "main", message: e.to_string() })?;
    // The copy is made durable by one checkpoint at its end, before the slot moves.
    dst.batch_execute("SET synchronous_commit = off; SET session_replication_role = replica")
        .map_err(|e| CopyError::Connect { what: "main", message: e.to_string() })?;
    Ok((src, dst))
}

/// Copies one table; returns the bytes read from the source.
fn copy_one(
    src: &mut Client,
    dst: &mut Client,
    snapshot: &str,
    table: &CopyTable,
    plan: &TablePlan,
    key: &[u8; 32],
    rows: &AtomicU64,
) -> Result<u64, CopyError> {
    let fail = |message: String| CopyError::Table { table: table.qualified.clone(), message };
    let cols = table.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let mut tx = src.transaction().map_err(|e| fail(e.to_string()))?;
    tx.batch_execute(&format!(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        snapshot.replace('\'', "''")
    ))
    .map_err(|e| fail(format!("importing the exported snapshot: {e}")))?;
    let reader = tx
        .copy_out(&format!("COPY (SELECT {cols} FROM {}) TO STDOUT", table.quoted))
        .map_err(|e| fail(format!("reading from the source: {e}")))?;
    let mut dtx = dst.transaction().map_err(|e| fail(e.to_string()))?;
    // Emptying the (empty) table in the loading transaction lets main, at
    // wal_level=minimal, write the rows without WAL: half the bytes through FUSE.
    dtx.batch_execute(&format!("TRUNCATE {}", table.quoted)).map_err(|e| fail(format!("preparing the table on main: {e}")))?;
    let mut writer =
        dtx.copy_in(&format!("COPY {} ({cols}) FROM STDIN", table.quoted)).map_err(|e| fail(format!("writing into main: {e}")))?;
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut bytes = 0u64;
    let mut line = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(1 << 20);
    let mut values: Vec<Value> = Vec::with_capacity(table.columns.len());
    let identity = plan.is_identity();
    let mut pending_rows = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| fail(format!("reading from the source: {e}")))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        if identity {
            out.extend_from_slice(&line);
        } else {
            decode_row(&line, &mut values).map_err(fail)?;
            plan.apply(key, &mut values);
            encode_row(&values, &mut out);
        }
        pending_rows += 1;
        if out.len() >= 1 << 20 {
            writer.write_all(&out).map_err(|e| fail(format!("writing into main: {e}")))?;
            out.clear();
            rows.fetch_add(pending_rows, Ordering::Relaxed);
            pending_rows = 0;
        }
    }
    writer.write_all(&out).map_err(|e| fail(format!("writing into main: {e}")))?;
    rows.fetch_add(pending_rows, Ordering::Relaxed);
    writer.finish().map_err(|e| fail(format!("writing into main: {e}")))?;
    dtx.commit().map_err(|e| fail(format!("committing on main: {e}")))?;
    drop(reader);
    tx.commit().map_err(|e| fail(e.to_string()))?;
    Ok(bytes)
}

/// Parses one line of COPY's text format into values (without the trailing newline).
pub fn decode_row(line: &[u8], values: &mut Vec<Value>) -> Result<(), String> {
    values.clear();
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    for field in line.split(|b| *b == b'\t') {
        if field == b"\\N" {
            values.push(Value::Null);
            continue;
        }
        let mut out = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let b = field[i];
            if b != b'\\' || i + 1 == field.len() {
                out.push(b);
                i += 1;
                continue;
            }
            let c = field[i + 1];
            i += 2;
            match c {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'0'..=b'7' => {
                    let mut v = u32::from(c - b'0');
                    for _ in 0..2 {
                        match field.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                b'x' => {
                    let mut v = 0u32;
                    let mut digits = 0;
                    while digits < 2 {
                        match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                i += 1;
                                digits += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(v as u8);
                }
                other => out.push(other),
            }
        }
        values.push(Value::Text(
            String::from_utf8(out).map_err(|_| "a value is not valid UTF-8 (the source database must use UTF8)".to_string())?,
        ));
    }
    Ok(())
}

/// Appends one row in COPY's text format, newline included.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            Value::Null => out.extend_from_slice(b"\\N"),
            Value::Text(s) => {
                for &b in s.as_bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(values: &[Value]) -> Vec<Value> {
        let mut line = Vec::new();
        encode_row(values, &mut line);
        let mut r = Vec::new();
        decode_row(&line, &mut r).unwrap();
        r
    }

    #[test]
    fn copy_text_format_round_trips_awkward_values() {
        let vals = vec![
            Value::Text("plain".into()),
            Value::Null,
            Value::Text("tab\there\nnew\\line\r".into()),
            Value::Text(String::new()),
            Value::Text("\\N".into()),
            Value::Text("ünïcødé".into()),
        ];
        assert_eq!(roundtrip(&vals), vals);
    }

    #[test]
    fn decodes_what_postgres_writes() {
        let mut v = Vec::new();
        decode_row(b"1\t\\N\ta\\tb\t\\101\\x42\\\\\n", &mut v).unwrap();
        assert_eq!(v, vec![Value::Text("1".into()), Value::Null, Value::Text("a\tb".into()), Value::Text("AB\\".into())]);
    }
}

//! Sampling a source for `pgbranch pii scan`: reads up to N non-null values of every
//! column whose type can hold recognisable PII (as text, read-only queries, quoted
//! identifiers) and asks the classifiers in [`super::detect`] for a guess per column.

use std::collections::BTreeMap;

use postgres::Client;

use super::detect::{self, Guess, TypeClass};
use crate::catalog::{quote_ident, SourceSchema, Table};
use crate::civil_date::civil_date;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading column types on the source: {0}")]
    Types(#[source] postgres::Error),
    #[error("sampling {table} on the source: {source}")]
    Sample {
        table: String,
        #[source]
        source: postgres::Error,
    },
}

/// What the scan found in one column.
#[derive(Clone, Debug)]
pub struct ColumnReport {
    pub name: String,
    /// format_type, e.g. `character varying(40)`.
    pub type_name: String,
    pub class: TypeClass,
    /// The length limit of varchar(n) / char(n).
    pub max_len: Option<usize>,
    pub not_null: bool,
    /// Under a unique index (the transformer must keep distinct values distinct).
    pub unique: bool,
    /// Non-null values sampled (0 for types that are not sampled).
    pub sampled: usize,
    pub guess: Option<Guess>,
}

#[derive(Clone, Debug)]
pub struct TableReport {
    /// schema.table
    pub table: String,
    pub columns: Vec<ColumnReport>,
    /// Why the table could not be sampled (e.g. no SELECT privilege); names still count.
    pub unreadable: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ScanReport {
    /// The source, password hidden, for the config's header (set by the caller).
    pub source: String,
    /// The day of the scan, YYYY-MM-DD (UTC).
    pub date: String,
    /// Values sampled per column, at most.
    pub sample: usize,
    pub tables: Vec<TableReport>,
}

impl ScanReport {
    pub fn column(&self, table: &str, column: &str) -> Option<&ColumnReport> {
        self.tables.iter().find(|t| t.table == table)?.columns.iter().find(|c| c.name == column)
    }
}

/// Days since 1970-01-01, UTC.
pub fn today() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs / 86400) as i64
}

/// Samples every table of `schema` and classifies every column.
pub fn scan(client: &mut Client, schema: &SourceSchema, sample: usize) -> Result<ScanReport, ScanError> {
    let today = today();
    let base = base_types(client, schema)?;
    let mut tables = Vec::new();
    for t in &schema.tables {
        let classes: Vec<TypeClass> = t.columns.iter().map(|c| TypeClass::of(base.get(&c.type_oid).map_or("", String::as_str))).collect();
        let (mut values, unreadable) = match sample_table(client, t, &classes, sample) {
            Ok(v) => (v, None),
            Err(e) => match e.as_db_error() {
                // No privilege, a lock timeout, a broken type output: scan by name only.
                Some(db) => (vec![Vec::new(); t.columns.len()], Some(db.message().to_string())),
                None => return Err(ScanError::Sample { table: t.qualified(), source: e }),
            },
        };
        let mut columns = Vec::new();
        for (i, c) in t.columns.iter().enumerate() {
            let vals = std::mem::take(&mut values[i]);
            let mut guess = detect::judge(&c.name, &c.type_name, classes[i], &vals, today);
            if let (Some(g), Some(_)) = (guess.as_mut(), &unreadable) {
                g.evidence = g.evidence.replace("no non-null values sampled", "table not readable, not sampled");
            }
            columns.push(ColumnReport {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                class: classes[i],
                max_len: detect::max_len(&c.type_name),
                not_null: c.not_null,
                unique: t.unique_columns.contains(&c.name),
                sampled: vals.len(),
                guess,
            });
        }
        tables.push(TableReport { table: t.qualified(), columns, unreadable });
    }
    Ok(ScanReport { source: String::new(), date: civil_date(today), sample, tables })
}

/// type oid -> typname of its base type (domains resolved to what they are over).
fn base_types(client: &mut Client, schema: &SourceSchema) -> Result<BTreeMap<u32, String>, ScanError> {
    let oids: Vec<u32> = schema.tables.iter().flat_map(|t| t.columns.iter().map(|c| c.type_oid)).collect();
    let rows = client
        .query(
            "WITH RECURSIVE d(oid, base) AS (
                 SELECT t.oid, t.oid FROM pg_type t WHERE t.oid = ANY($1)
                 UNION ALL
                 SELECT d.oid, t.typbasetype FROM d JOIN pg_type t ON t.oid = d.base WHERE t.typtype = 'd')
             SELECT d.oid, b.typname::text FROM d JOIN pg_type b ON b.oid = d.base WHERE b.typtype <> 'd'",
            &[&oids],
        )
        .map_err(ScanError::Types)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Up to `sample` non-null values (as text, at most 1000 characters) of each sampled
/// column: a block sample of a big table, else its first rows; then, for a column with
/// few values among those rows, its first non-null values (bounded by a statement
/// timeout, so a sparse column of a huge table cannot stall the scan).
fn sample_table(client: &mut Client, t: &Table, classes: &[TypeClass], sample: usize) -> Result<Vec<Vec<String>>, postgres::Error> {
    let mut out = vec![Vec::new(); t.columns.len()];
    let wanted: Vec<usize> = (0..t.columns.len()).filter(|&i| classes[i].sampled()).collect();
    if wanted.is_empty() || sample == 0 {
        return Ok(out);
    }
    let expr = |i: usize| format!("left({}::text, 1000)", quote_ident(&t.columns[i].name));
    let list = wanted.iter().map(|&i| expr(i)).collect::<Vec<_>>().join(", ");
    let limit = sample;
    let mut rows = Vec::new();
    if t.estimated_rows > 20 * sample as i64 {
        let pct = (500.0 * sample as f64 / t.estimated_rows as f64).clamp(0.000_1, 100.0);
        let sql = format!("SELECT {list} FROM {} TABLESAMPLE SYSTEM ({pct:.6}) LIMIT {limit}", t.quoted());
        rows = with_timeout(client, "60s", &sql).unwrap_or_default();
    }
    if rows.len() < sample {
        rows = client.query(&format!("SELECT {list} FROM {} LIMIT {limit}", t.quoted()), &[])?;
    }
    let complete = rows.len() < sample; // every row of the table was read
    for r in &rows {
        for (k, &i) in wanted.iter().enumerate() {
            if let Some(v) = r.get::<_, Option<String>>(k) {
                out[i].push(v);
            }
        }
    }
    for &i in &wanted {
        if !complete && out[i].len() < sample / 2 {
            let col = quote_ident(&t.columns[i].name);
            let sql = format!("SELECT {} FROM {} WHERE {col} IS NOT NULL LIMIT {limit}", expr(i), t.quoted());
            if let Ok(more) = with_timeout(client, "10s", &sql) {
                if more.len() > out[i].len() {
                    out[i] = more.iter().map(|r| r.get(0)).collect();
                }
            }
        }
    }
    Ok(out)
}

/// A read-only query under a statement timeout; an error leaves the session usable.
fn with_timeout(client: &mut Client, timeout: &str, sql: &str) -> Result<Vec<postgres::Row>, postgres::Error> {
    let mut tx = client.build_transaction().read_only(true).start()?;
    tx.batch_execute(&format!("SET LOCAL statement_timeout = '{timeout}'"))?;
    let rows = tx.query(sql, &[])?;
    tx.commit()?;
    Ok(rows)
}

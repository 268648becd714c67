//! The replicated schema of a source database, read from its system catalogs: which
//! tables a logical follower sees (ordinary tables and partitioned parents, never
//! partitions, system, temporary, unlogged or extension-owned tables), their columns in
//! attnum order, generated columns, replica identity key, unique columns and size.
//! Also owns postgres identifier quoting.

use std::collections::{BTreeMap, BTreeSet};

use postgres::Client;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(40)`.
    pub type_name: String,
    pub type_oid: u32,
    pub not_null: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
    /// attnum order; no dropped, system or generated columns.
    pub columns: Vec<Column>,
    /// Generated columns (computed on the target, never replicated), attnum order.
    pub generated: Vec<String>,
    /// Replica identity columns, in index order: the primary key for identity `d`
    /// (default) and `f` (full), the index's columns for `i` (using index), empty for
    /// `n` (nothing) or without a primary key.
    pub key: Vec<String>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Columns under a unique index (alone or with others, key columns only, partial
    /// indexes included, and every column an expression index refers to), on the table
    /// or on any of its partitions.
    pub unique_columns: BTreeSet<String>,
    /// `reltuples` (summed over the partitions of a partitioned table), at least 0.
    pub estimated_rows: i64,
    /// `pg_table_size` (summed over the partitions of a partitioned table).
    pub bytes: i64,
}

impl Table {
    /// `schema.table`: the key of a table in the transform config.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."table"`, for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSchema {
    /// Ordered by schema, then name.
    pub tables: Vec<Table>,
}

/// A postgres identifier, always quoted: `a"b` -> `"a""b"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The replicated tables: ordinary and partitioned (not partitions: the publication
/// publishes via the partition root), permanent, outside system and temporary schemas,
/// not owned by an extension.
const TABLES: &str = "
    SELECT c.oid, c.relkind = 'p' AS partitioned
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// Each replicated table with every relation whose rows it holds: itself and, for a
/// partitioned table, all its partitions (any depth).
fn rels() -> String {
    format!(
        "t AS ({TABLES}),
         rel AS (SELECT t.oid AS top, t.oid AS rel FROM t
                 UNION
                 SELECT t.oid, pt.relid::oid FROM t, LATERAL pg_partition_tree(t.oid) pt WHERE t.partitioned)"
    )
}

impl SourceSchema {
    /// Reads the replicated schema (see the module doc for what is included).
    pub fn read(client: &mut Client) -> Result<SourceSchema, postgres::Error> {
        let rels = rels();
        let table_rows = client.query(
            &format!(
                "WITH {rels}
                 SELECT t.oid, n.nspname::text, c.relname::text, c.relreplident::text,
                        (SELECT coalesce(sum(greatest(rc.reltuples, 0)), 0)::bigint
                           FROM rel JOIN pg_class rc ON rc.oid = rel.rel
                          WHERE rel.top = t.oid AND rc.relkind = 'r'),
                        (SELECT coalesce(sum(pg_table_size(rel.rel)), 0)::bigint FROM rel WHERE rel.top = t.oid)
                 FROM t JOIN pg_class c ON c.oid = t.oid JOIN pg_namespace n ON n.oid = c.relnamespace
                 ORDER BY n.nspname, c.relname"
            ),
            &[],
        )?;
        let mut tables: BTreeMap<u32, Table> = BTreeMap::new();
        let mut order = Vec::new();
        for r in &table_rows {
            let oid: u32 = r.get(0);
            let ident: String = r.get(3);
            order.push(oid);
            tables.insert(
                oid,
                Table {
                    schema: r.get(1),
                    name: r.get(2),
                    columns: Vec::new(),
                    generated: Vec::new(),
                    key: Vec::new(),
                    replica_identity: ident.chars().next().unwrap_or('d'),
                    unique_columns: BTreeSet::new(),
                    estimated_rows: r.get::<_, i64>(4).max(0),
                    bytes: r.get(5),
                },
            );
        }

        let columns = client.query(
            &format!(
                "WITH t AS ({TABLES})
                 SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid,
                        a.attnotnull, a.attgenerated <> ''
                 FROM t JOIN pg_attribute a ON a.attrelid = t.oid
                 WHERE a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attrelid, a.attnum"
            ),
            &[],
        )?;
        for r in &columns {
            let Some(t) = tables.get_mut(&r.get::<_, u32>(0)) else { continue };
            let name: String = r.get(1);
            if r.get::<_, bool>(5) {
                t.generated.push(name);
            } else {
                t.columns.push(Column { name, type_name: r.get(2), type_oid: r.get(3), not_null: r.get(4) });
            }
        }

        // Unique indexes of each table and its partitions: key columns by position,
        // plus every column an expression index depends on (pg_depend cannot tell an
        // expression's columns from a predicate's, so this errs on the side of unique).
        let index_columns = client.query(
            &format!(
                "WITH {rels}
                 SELECT rel.top, rel.rel = rel.top, i.indexrelid, i.indisprimary, i.indisreplident, a.attname::text, k.ord
                 FROM rel JOIN pg_index i ON i.indrelid = rel.rel AND i.indisunique
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE k.ord <= i.indnkeyatts AND k.attnum > 0
                 UNION ALL
                 SELECT rel.top, false, i.indexrelid, false, false, a.attname::text, 0
                 FROM rel JOIN pg_index i ON i.indrelid = rel.rel AND i.indisunique AND i.indexprs IS NOT NULL
                 JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                 AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid > 0
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = d.refobjsubid
                 ORDER BY 1, 3, 7"
            ),
            &[],
        )?;
        let mut primary: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut by_index: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for r in &index_columns {
            let Some(t) = tables.get_mut(&r.get::<_, u32>(0)) else { continue };
            let own: bool = r.get(1);
            let name: String = r.get(5);
            if own && r.get::<_, bool>(3) {
                primary.entry(r.get(0)).or_default().push(name.clone());
            }
            if own && r.get::<_, bool>(4) {
                by_index.entry(r.get(0)).or_default().push(name.clone());
            }
            t.unique_columns.insert(name);
        }
        for (oid, t) in tables.iter_mut() {
            t.key = match t.replica_identity {
                'i' => by_index.remove(oid).unwrap_or_default(),
                'n' => Vec::new(),
                _ => primary.remove(oid).unwrap_or_default(),
            };
        }
        Ok(SourceSchema { tables: order.into_iter().filter_map(|oid| tables.remove(&oid)).collect() })
    }

    /// The inputs of `TransformConfig::validate`: schema.table -> its replicated
    /// columns, and the (schema.table, column) pairs under a unique index.
    #[allow(clippy::type_complexity)]
    pub fn validation_inputs(&self) -> (BTreeMap<String, Vec<String>>, BTreeSet<(String, String)>) {
        let mut columns = BTreeMap::new();
        let mut unique = BTreeSet::new();
        for t in &self.tables {
            let q = t.qualified();
            columns.insert(q.clone(), t.columns.iter().map(|c| c.name.clone()).collect());
            for c in &t.unique_columns {
                if t.column(c).is_some() {
                    unique.insert((q.clone(), c.clone()));
                }
            }
        }
        (columns, unique)
    }

    /// A table by its `schema.table` name.
    pub fn table(&self, qualified: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.qualified() == qualified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        let t = Table {
            schema: "my schema".into(),
            name: "t\"1".into(),
            columns: vec![],
            generated: vec![],
            key: vec![],
            replica_identity: 'd',
            unique_columns: BTreeSet::new(),
            estimated_rows: 0,
            bytes: 0,
        };
        assert_eq!(t.qualified(), "my schema.t\"1");
        assert_eq!(t.quoted(), "\"my schema\".\"t\"\"1\"");
    }
}

//! Turning decoded changes into SQL on main, masked first: a run of inserts into one
//! table becomes one multi-row INSERT; updates and deletes find their row by its
//! (masked) replica identity. Masking is deterministic, so the masked old key of a row
//! is exactly the key main stored for it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::pgoutput::{Datum, OldTuple, Relation, Tuple};
use crate::catalog::quote_ident;
use crate::transform::{TablePlan, Value};

/// Types without a btree equality operator: compared through their text form.
const NO_EQUALITY: &[u32] = &[114, 142, 600, 601, 602, 603, 604, 628, 718];

/// A replicated table as the stream describes it, with its masking plan.
#[derive(Clone, Debug)]
pub struct TableState {
    pub qualified: String,
    pub quoted: String,
    pub columns: Vec<String>,
    pub type_oids: Vec<u32>,
    /// Type names on the source without modifiers (casts in a VALUES list).
    pub type_names: Vec<String>,
    /// Positions of the replica identity columns.
    pub key: Vec<usize>,
    pub full_identity: bool,
    pub plan: TablePlan,
}

impl TableState {
    pub fn new(rel: &Relation, plan: TablePlan, type_names: Vec<String>) -> TableState {
        TableState {
            qualified: format!("{}.{}", rel.schema, rel.name),
            quoted: format!("{}.{}", quote_ident(&rel.schema), quote_ident(&rel.name)),
            columns: rel.columns.iter().map(|c| c.name.clone()).collect(),
            type_oids: rel.columns.iter().map(|c| c.type_oid).collect(),
            type_names,
            key: rel.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect(),
            full_identity: rel.replica_identity == b'f',
            plan,
        }
    }

    /// Masks a tuple; returns the values and which of them are present (an unchanged
    /// TOAST value is absent: main keeps what it has).
    fn mask(&self, key: &[u8; 32], tuple: Tuple) -> (Vec<Value>, Vec<bool>) {
        let mut present = Vec::with_capacity(tuple.len());
        let mut values: Vec<Value> = tuple
            .into_iter()
            .map(|d| {
                present.push(!matches!(d, Datum::UnchangedToast));
                match d {
                    Datum::Text(s) => Value::Text(s),
                    Datum::Null | Datum::UnchangedToast => Value::Null,
                }
            })
            .collect();
        self.plan.apply(key, &mut values);
        (values, present)
    }
}

impl TableState {
    /// Template columns of an update. A template is always set (its inputs may have
    /// changed while its own value did not), and when an input is an unchanged TOAST
    /// value — not sent by the source — that input is read from main's row, which
    /// holds it masked already: the template becomes a SQL expression.
    fn template_exprs(&self, values: &[Value], present: &mut [bool]) -> BTreeMap<usize, String> {
        let mut exprs = BTreeMap::new();
        let mut by_name: Vec<usize> = (0..self.columns.len()).collect();
        by_name.sort_by(|a, b| self.columns[*a].cmp(&self.columns[*b]));
        let template_columns: Vec<usize> = self.plan.templates().map(|(i, _)| i).collect();
        for (i, template) in self.plan.templates() {
            present[i] = true;
            let inputs: Vec<usize> = by_name.iter().copied().filter(|&j| template.contains(&format!("{{{}}}", self.columns[j]))).collect();
            if inputs.iter().all(|&j| present[j] || template_columns.contains(&j)) {
                continue;
            }
            // The same replacements, in the same (name) order, as the transformer's.
            let mut e = String::new();
            push_literal(&mut e, &Value::Text(template.to_string()));
            for j in inputs {
                let mut placeholder = String::new();
                push_literal(&mut placeholder, &Value::Text(format!("{{{}}}", self.columns[j])));
                let value = if template_columns.contains(&j) {
                    "''".to_string() // templates read other templates as "", as the transformer does
                } else if present[j] {
                    let mut lit = String::new();
                    push_literal(
                        &mut lit,
                        &Value::Text(match &values[j] {
                            Value::Text(s) => s.clone(),
                            Value::Null => String::new(),
                        }),
                    );
                    lit
                } else {
                    format!("coalesce({}::text, '')", quote_ident(&self.columns[j]))
                };
                e = format!("replace({e}, {placeholder}, {value})");
            }
            exprs.insert(i, e);
        }
        exprs
    }
}

impl KeyedGroup {
    fn open(kind: GroupKind, t: &TableState, columns: Vec<usize>) -> KeyedGroup {
        let alias: Vec<String> = (0..columns.len()).map(|n| format!("_{n}")).collect();
        let head = match kind {
            GroupKind::Update => {
                let set: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .skip(t.key.len())
                    .map(|(n, &i)| format!("{} = v._{n}", quote_ident(&t.columns[i])))
                    .collect();
                format!("UPDATE {} SET {} FROM (VALUES\n", t.quoted, set.join(", "))
            }
            GroupKind::Delete => format!("DELETE FROM {} USING (VALUES\n", t.quoted),
        };
        let on: Vec<String> =
            t.key.iter().enumerate().map(|(n, &k)| format!("{}.{} = v._{n}", t.quoted, quote_ident(&t.columns[k]))).collect();
        KeyedGroup {
            kind,
            table: t.quoted.clone(),
            columns,
            keys: Default::default(),
            values: String::new(),
            sql_head: head,
            sql_tail: format!(") AS v({}) WHERE {};\n", alias.join(", "), on.join(" AND ")),
        }
    }
}

/// Appends a SQL literal (standard_conforming_strings = on).
fn push_literal(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Text(s) => {
            out.push('\'');
            for c in s.chars() {
                if c == '\'' {
                    out.push('\'');
                }
                out.push(c);
            }
            out.push('\'');
        }
    }
}

/// SQL for a group of source transactions, applied on main as one transaction.
#[derive(Default)]
pub struct SqlBatch {
    sql: String,
    /// The table whose multi-row INSERT is still open.
    open_insert: Option<String>,
    /// Updates or deletes by key on one table, applied as one statement.
    group: Option<KeyedGroup>,
    pub rows: u64,
}

#[derive(PartialEq)]
enum GroupKind {
    Update,
    Delete,
}

/// A run of updates (same columns set, key unchanged, each row once) or deletes by
/// key on one table: one `UPDATE ... FROM (VALUES ...)` or `DELETE ... USING (VALUES
/// ...)`, joined on the key, instead of a statement per row.
struct KeyedGroup {
    kind: GroupKind,
    table: String,
    /// Positions: the key columns first, then (updates) the columns set.
    columns: Vec<usize>,
    keys: std::collections::HashSet<Vec<Value>>,
    values: String,
    sql_head: String,
    sql_tail: String,
}

impl SqlBatch {
    pub fn is_empty(&self) -> bool {
        self.sql.is_empty() && self.open_insert.is_none() && self.group.is_none()
    }

    pub fn len(&self) -> usize {
        self.sql.len() + self.group.as_ref().map_or(0, |g| g.values.len())
    }

    /// Ends the open multi-row INSERT or keyed group: the next statement follows it.
    fn close_insert(&mut self) {
        if self.open_insert.take().is_some() {
            self.sql.push_str(";\n");
        }
        if let Some(g) = self.group.take() {
            self.sql.push_str(&g.sql_head);
            self.sql.push_str(&g.values);
            self.sql.push_str(&g.sql_tail);
        }
    }

    /// Adds one row to the keyed group of `kind` on `t` (opening it if needed).
    /// `columns`: key positions first, then the columns set.
    fn group_row(&mut self, kind: GroupKind, t: &TableState, columns: Vec<usize>, values: &[Value]) {
        let key: Vec<Value> = t.key.iter().map(|&k| values[k].clone()).collect();
        let fits = self.group.as_ref().is_some_and(|g| {
            g.kind == kind && g.table == t.quoted && g.columns == columns && (kind == GroupKind::Delete || !g.keys.contains(&key))
        });
        if !fits {
            self.close_insert();
            self.group = Some(KeyedGroup::open(kind, t, columns));
        }
        let g = self.group.as_mut().unwrap();
        let first = g.keys.is_empty();
        g.values.push_str(if first { "(" } else { ",\n(" });
        for (n, &i) in g.columns.iter().enumerate() {
            if n > 0 {
                g.values.push_str(", ");
            }
            push_literal(&mut g.values, &values[i]);
            if first {
                // The first row types the VALUES list; the rest follow it.
                let _ = write!(g.values, "::{}", t.type_names[i]);
            }
        }
        g.values.push(')');
        g.keys.insert(key);
    }

    pub fn insert(&mut self, t: &TableState, key: &[u8; 32], tuple: Tuple) {
        let (values, _) = t.mask(key, tuple);
        if self.open_insert.as_deref() == Some(t.quoted.as_str()) {
            self.sql.push_str(",\n(");
        } else {
            self.close_insert();
            let cols = t.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
            let _ = write!(self.sql, "INSERT INTO {} ({cols}) VALUES\n(", t.quoted);
            self.open_insert = Some(t.quoted.clone());
        }
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            push_literal(&mut self.sql, v);
        }
        self.sql.push(')');
        self.rows += 1;
    }

    pub fn update(&mut self, t: &TableState, key: &[u8; 32], old: Option<OldTuple>, new: Tuple) {
        let (new_values, mut new_present) = t.mask(key, new);
        let exprs = t.template_exprs(&new_values, &mut new_present);
        let keyed = !t.full_identity && !t.key.is_empty() && t.key.iter().all(|&k| new_present[k]);
        if keyed && old.is_none() && exprs.is_empty() {
            let set: Vec<usize> = (0..new_values.len()).filter(|i| new_present[*i] && !t.key.contains(i)).collect();
            if !set.is_empty() {
                let columns = t.key.iter().copied().chain(set).collect();
                self.group_row(GroupKind::Update, t, columns, &new_values);
            }
            self.rows += 1;
            return;
        }
        self.close_insert();
        let _ = write!(self.sql, "UPDATE {} SET ", t.quoted);
        let mut first = true;
        for (i, v) in new_values.iter().enumerate() {
            if !new_present[i] {
                continue;
            }
            if !first {
                self.sql.push_str(", ");
            }
            first = false;
            let _ = write!(self.sql, "{} = ", quote_ident(&t.columns[i]));
            match exprs.get(&i) {
                Some(e) => self.sql.push_str(e),
                None => push_literal(&mut self.sql, v),
            }
        }
        match old {
            Some(OldTuple::Key(k)) | Some(OldTuple::Full(k)) => {
                let (old_values, old_present) = t.mask(key, k);
                self.push_where(t, &old_values, &old_present);
            }
            None => self.push_where(t, &new_values, &new_present),
        }
        self.rows += 1;
    }

    pub fn delete(&mut self, t: &TableState, key: &[u8; 32], old: OldTuple) {
        let (OldTuple::Key(k) | OldTuple::Full(k)) = old;
        let (values, present) = t.mask(key, k);
        if !t.full_identity && !t.key.is_empty() {
            self.group_row(GroupKind::Delete, t, t.key.clone(), &values);
            self.rows += 1;
            return;
        }
        self.close_insert();
        let _ = write!(self.sql, "DELETE FROM {}", t.quoted);
        self.push_where(t, &values, &present);
        self.rows += 1;
    }

    /// Schema changes the stream revealed, applied in order with the rows.
    pub fn push_ddl(&mut self, ddl: &str) {
        self.close_insert();
        self.sql.push_str(ddl);
    }

    pub fn truncate(&mut self, tables: &[&TableState], cascade: bool, restart_identity: bool) {
        self.close_insert();
        let names = tables.iter().map(|t| t.quoted.as_str()).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            self.sql,
            "TRUNCATE {names}{}{};",
            if restart_identity { " RESTART IDENTITY" } else { "" },
            if cascade { " CASCADE" } else { "" }
        );
        self.rows += 1;
    }

    /// The row by its key columns, or (REPLICA IDENTITY FULL) by every present value.
    fn push_where(&mut self, t: &TableState, values: &[Value], present: &[bool]) {
        if t.full_identity || t.key.is_empty() {
            let _ = write!(self.sql, " WHERE ctid = (SELECT ctid FROM {} WHERE true", t.quoted);
            for (i, v) in values.iter().enumerate() {
                if !present[i] {
                    continue;
                }
                let col = quote_ident(&t.columns[i]);
                if NO_EQUALITY.contains(&t.type_oids[i]) {
                    let _ = write!(self.sql, " AND {col}::text IS NOT DISTINCT FROM ");
                } else {
                    let _ = write!(self.sql, " AND {col} IS NOT DISTINCT FROM ");
                }
                push_literal(&mut self.sql, v);
            }
            self.sql.push_str(" LIMIT 1);\n");
        } else {
            self.sql.push_str(" WHERE ");
            for (n, &i) in t.key.iter().enumerate() {
                if n > 0 {
                    self.sql.push_str(" AND ");
                }
                let _ = write!(self.sql, "{} = ", quote_ident(&t.columns[i]));
                push_literal(&mut self.sql, &values[i]);
            }
            self.sql.push_str(";\n");
        }
    }

    /// The SQL so far (the open INSERT closed); the batch is then empty but keeps
    /// counting rows.
    pub fn take_sql(&mut self) -> String {
        self.close_insert();
        std::mem::take(&mut self.sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::pgoutput::RelColumn;
    use crate::transform::TransformConfig;

    fn users() -> (TableState, TransformConfig) {
        let cfg = TransformConfig::parse(
            "t.yaml",
            "transformations:\n  table_transformers:\n    - table: users\n      column_transformers:\n        id: {name: keep}\n        email: {name: hash, parameters: {length: 16}}\n        bio: {name: keep}\n",
        )
        .unwrap();
        let rel = Relation {
            id: 1,
            schema: "public".into(),
            name: "users".into(),
            replica_identity: b'd',
            columns: vec![
                RelColumn { key: true, name: "id".into(), type_oid: 23, type_mod: -1 },
                RelColumn { key: false, name: "email".into(), type_oid: 25, type_mod: -1 },
                RelColumn { key: false, name: "bio".into(), type_oid: 25, type_mod: -1 },
            ],
        };
        let cols: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
        let plan = cfg.plan("public.users", &cols);
        (TableState::new(&rel, plan, vec!["integer".into(), "text".into(), "text".into()]), cfg)
    }

    #[test]
    fn inserts_coalesce_and_values_are_masked_and_quoted() {
        let (t, _) = users();
        let mut b = SqlBatch::default();
        let k = [1u8; 32];
        b.insert(&t, &k, vec![Datum::Text("1".into()), Datum::Text("a@b.c".into()), Datum::Text("it's".into())]);
        b.insert(&t, &k, vec![Datum::Text("2".into()), Datum::Null, Datum::Null]);
        let sql = b.take_sql();
        assert_eq!(sql.matches("INSERT INTO").count(), 1, "{sql}");
        assert!(!sql.contains("a@b.c") && sql.contains("'it''s'") && sql.contains("NULL"), "{sql}");
        assert_eq!(b.rows, 2);
    }

    #[test]
    fn updates_and_deletes_by_key_group_into_one_statement() {
        let (t, _) = users();
        let mut b = SqlBatch::default();
        let k = [1u8; 32];
        let row = |id: &str| vec![Datum::Text(id.into()), Datum::Text("x@y.z".into()), Datum::UnchangedToast];
        b.update(&t, &k, None, row("7"));
        b.update(&t, &k, None, row("8"));
        b.update(&t, &k, None, row("7")); // the same row again: a new statement, in order
        b.delete(&t, &k, OldTuple::Key(vec![Datum::Text("9".into()), Datum::Null, Datum::Null]));
        b.delete(&t, &k, OldTuple::Key(vec![Datum::Text("10".into()), Datum::Null, Datum::Null]));
        let sql = b.take_sql();
        assert_eq!(sql.matches("UPDATE").count(), 2, "{sql}");
        assert_eq!(sql.matches("DELETE").count(), 1, "{sql}");
        assert!(sql.starts_with("UPDATE \"public\".\"users\" SET \"email\" = v._1 FROM (VALUES\n('7'::integer, '"), "{sql}");
        assert!(!sql.contains("\"bio\"") && !sql.contains("x@y.z"), "unchanged TOAST left alone, values masked: {sql}");
        assert!(sql.contains("WHERE \"public\".\"users\".\"id\" = v._0;"), "{sql}");
        assert_eq!(b.rows, 5);
    }
}

//! PII transformation: the config format (the seed's YAML, unchanged), its validation
//! against the replicated schema, and the transformers that every value of a configured
//! column passes through in memory before anything is written.
//!
//! Transforms are deterministic under a secret key: one input gives one output
//! everywhere (joins on masked values still match) and a re-sync gives the same data.
//!
//! The logical follower ([`crate::logical`]) masks every row through a [`TablePlan`].

mod fpe;
mod transformers;
mod words;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;

pub use transformers::{Transformer, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: malformed YAML at line {line}, column {column}: {message}")]
    Yaml { file: String, line: usize, column: usize, message: String },
    #[error("{file}:{line}: {table}.{column}: unknown transformer '{name}' (known: {known})")]
    UnknownTransformer { file: String, line: usize, table: String, column: String, name: String, known: String },
    #[error("{file}:{line}: {table}.{column}: transformer '{name}': {message}")]
    BadParameter { file: String, line: usize, table: String, column: String, name: String, message: String },
    #[error("{file}: table {table} is in the config but not replicated from the source")]
    UnknownTable { file: String, table: String },
    #[error("{file}: column {table}.{column} is in the config but not in the source table")]
    UnknownColumn { file: String, table: String, column: String },
    #[error("{file}: strict validation: these columns have no transformer (name each, or mark it `keep`): {columns}")]
    Uncovered { file: String, columns: String },
    #[error("{file}:{line}: {table}.{column} has a unique index, but '{name}' can map two values to one; use email, hash (length >= 16), uuid, or keep")]
    NotUnique { file: String, line: usize, table: String, column: String, name: String },
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    transformations: RawTransformations,
}

#[derive(Debug, Deserialize)]
struct RawTransformations {
    #[serde(default)]
    table_transformers: Vec<RawTable>,
}

#[derive(Debug, Deserialize)]
struct RawTable {
    #[serde(default = "public")]
    schema: String,
    table: String,
    #[serde(default)]
    column_transformers: BTreeMap<String, RawColumn>,
}

fn name_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(|| "null".into()))
}

fn public() -> String {
    "public".into()
}

#[derive(Debug, Deserialize)]
struct RawColumn {
    /// `name: null` is YAML's null, which means the `null` transformer.
    #[serde(deserialize_with = "name_or_null")]
    name: String,
    #[serde(default)]
    parameters: yaml_serde::Value,
}

/// A parsed, checked transform config: (schema.table) -> column -> transformer.
#[derive(Debug)]
pub struct TransformConfig {
    pub file: String,
    pub tables: BTreeMap<String, BTreeMap<String, Arc<Transformer>>>,
    lines: BTreeMap<(String, String), usize>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Where each table entry of the config starts and where each of its column keys is
/// (1-based lines), in the order of the entries. YAML parsers drop positions of keys,
/// so this follows the file's indentation: the entries of `table_transformers`, and
/// the keys one level below each entry's `column_transformers`.
fn entry_lines(text: &str) -> Vec<(usize, BTreeMap<String, usize>)> {
    let lines: Vec<&str> = text.lines().collect();
    let skip = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    let Some(list) = lines.iter().position(|l| l.trim_start().starts_with("table_transformers:")) else { return Vec::new() };
    let mut entries: Vec<(usize, BTreeMap<String, usize>)> = Vec::new();
    let mut entry_indent = None;
    let mut i = list + 1;
    while i < lines.len() {
        let (line, text) = (lines[i], lines[i].trim_start());
        if skip(line) {
            i += 1;
            continue;
        }
        let is_item = text == "-" || text.starts_with("- ");
        if indent(line) <= indent(lines[list]) && !is_item {
            break;
        }
        if is_item && *entry_indent.get_or_insert(indent(line)) == indent(line) {
            entries.push((i + 1, BTreeMap::new()));
        }
        let key = text.trim_start_matches('-').trim_start();
        if key.starts_with("column_transformers:") {
            let key_indent = indent(line) + (text.len() - key.len());
            let mut child_indent = None;
            i += 1;
            while i < lines.len() {
                let l = lines[i];
                if !skip(l) {
                    if indent(l) <= key_indent {
                        break;
                    }
                    if *child_indent.get_or_insert(indent(l)) == indent(l) {
                        if let (Some((name, _)), Some(entry)) = (l.trim_start().split_once(':'), entries.last_mut()) {
                            entry.1.insert(name.trim().trim_matches('"').trim_matches('\'').to_string(), i + 1);
                        }
                    }
                }
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    entries
}

// Config errors are cold (a user's file, read once) and carry file, line, table and
// column for the message: their size costs nothing worth boxing them for.
#[allow(clippy::result_large_err)]
impl TransformConfig {
    pub fn parse(file: &str, text: &str) -> Result<TransformConfig, ConfigError> {
        let raw: RawConfig = yaml_serde::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Yaml { file: file.into(), line, column, message: e.to_string() }
        })?;
        let mut tables = BTreeMap::new();
        let mut lines = BTreeMap::new();
        let positions = entry_lines(text);
        for (n, t) in raw.transformations.table_transformers.into_iter().enumerate() {
            let key = format!("{}.{}", t.schema, t.table);
            let (table_line, columns_at) = positions.get(n).cloned().unwrap_or_default();
            let mut cols = BTreeMap::new();
            for (column, spec) in t.column_transformers {
                let line = columns_at.get(&column).copied().unwrap_or(table_line);
                let tr = Transformer::from_config(&spec.name, &spec.parameters).map_err(|e| match e {
                    transformers::BuildError::Unknown => ConfigError::UnknownTransformer {
                        file: file.into(),
                        line,
                        table: key.clone(),
                        column: column.clone(),
                        name: spec.name.clone(),
                        known: Transformer::NAMES.join(", "),
                    },
                    transformers::BuildError::Parameter(message) => ConfigError::BadParameter {
                        file: file.into(),
                        line,
                        table: key.clone(),
                        column: column.clone(),
                        name: spec.name.clone(),
                        message,
                    },
                })?;
                lines.insert((key.clone(), column.clone()), line);
                cols.insert(column, Arc::new(tr));
            }
            tables.insert(key, cols);
        }
        Ok(TransformConfig { file: file.into(), tables, lines })
    }

    /// Checks the config against the replicated schema: `schema` maps schema.table to
    /// its columns, `unique` lists (schema.table, column) under a unique index. Strict
    /// mode refuses any column without a transformer (or `keep`).
    pub fn validate(
        &self,
        schema: &BTreeMap<String, Vec<String>>,
        unique: &BTreeSet<(String, String)>,
        strict: bool,
    ) -> Result<(), ConfigError> {
        for (table, cols) in &self.tables {
            let Some(source_cols) = schema.get(table) else {
                return Err(ConfigError::UnknownTable { file: self.file.clone(), table: table.clone() });
            };
            for (col, tr) in cols {
                if !source_cols.contains(col) {
                    return Err(ConfigError::UnknownColumn { file: self.file.clone(), table: table.clone(), column: col.clone() });
                }
                if unique.contains(&(table.clone(), col.clone())) && !tr.keeps_unique() {
                    return Err(ConfigError::NotUnique {
                        file: self.file.clone(),
                        line: self.lines.get(&(table.clone(), col.clone())).copied().unwrap_or(0),
                        table: table.clone(),
                        column: col.clone(),
                        name: tr.name().into(),
                    });
                }
            }
        }
        if strict {
            let mut uncovered = Vec::new();
            for (table, cols) in schema {
                for c in cols {
                    if !self.tables.get(table).is_some_and(|t| t.contains_key(c)) {
                        uncovered.push(format!("{table}.{c}"));
                    }
                }
            }
            if !uncovered.is_empty() {
                return Err(ConfigError::Uncovered { file: self.file.clone(), columns: uncovered.join(", ") });
            }
        }
        Ok(())
    }

    /// Whether the config names `column` of `table` (with a transformer or `keep`).
    pub fn covers(&self, table: &str, column: &str) -> bool {
        self.tables.get(table).is_some_and(|t| t.contains_key(column))
    }

    /// The transformers of `table` by column position, for rows laid out as `columns`.
    pub fn plan(&self, table: &str, columns: &[String]) -> TablePlan {
        let cols = self.tables.get(table);
        let by_position: Vec<Option<Arc<Transformer>>> =
            columns.iter().map(|c| cols.and_then(|t| t.get(c)).filter(|tr| !matches!(***tr, Transformer::Keep)).cloned()).collect();
        let has_template = by_position.iter().flatten().any(|t| t.is_template());
        TablePlan { columns: columns.to_vec(), by_position, has_template }
    }

    /// Transforms one row of `table` in place; columns are (name, value) pairs.
    pub fn apply(&self, key: &[u8; 32], table: &str, row: &mut [(String, Value)]) {
        let names: Vec<String> = row.iter().map(|(n, _)| n.clone()).collect();
        let mut values: Vec<Value> = row.iter().map(|(_, v)| v.clone()).collect();
        self.plan(table, &names).apply(key, &mut values);
        for ((_, v), new) in row.iter_mut().zip(values) {
            *v = new;
        }
    }
}

/// One table's transformers laid out by column position: built once per table layout
/// so that masking a row costs no lookups by name.
#[derive(Clone, Debug)]
pub struct TablePlan {
    columns: Vec<String>,
    by_position: Vec<Option<Arc<Transformer>>>,
    has_template: bool,
}

impl TablePlan {
    /// True when every column passes unchanged (no transformer, or `keep`).
    pub fn is_identity(&self) -> bool {
        self.by_position.iter().all(Option::is_none)
    }

    /// The template columns: (position, template text).
    pub fn templates(&self) -> impl Iterator<Item = (usize, &str)> {
        self.by_position.iter().enumerate().filter_map(|(i, t)| match t.as_deref() {
            Some(Transformer::Template(text)) => Some((i, text.as_str())),
            _ => None,
        })
    }

    /// The plan's column names, in position order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Masks one row in place: `values[i]` is column `i` of the plan's layout.
    pub fn apply(&self, key: &[u8; 32], values: &mut [Value]) {
        let none = BTreeMap::new();
        for (i, v) in values.iter_mut().enumerate() {
            if let Some(Some(tr)) = self.by_position.get(i) {
                // A template column's raw value is dropped before any template reads
                // the row: templates see masked values only (a template column reads "").
                *v = if tr.is_template() { Value::Null } else { tr.apply(key, &self.columns[i], v, &none) };
            }
        }
        if self.has_template {
            // Templates see the masked values of the other columns, never raw ones.
            let masked: BTreeMap<String, Value> = self.columns.iter().cloned().zip(values.iter().cloned()).collect();
            for (i, v) in values.iter_mut().enumerate() {
                if let Some(Some(tr)) = self.by_position.get(i) {
                    if tr.is_template() {
                        *v = tr.apply(key, &self.columns[i], v, &masked);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

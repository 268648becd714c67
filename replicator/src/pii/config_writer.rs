//! Turning a scan into a transform config: which transformer each column gets (by its
//! guessed kind, its type, length limit, nullability and uniqueness), and the YAML text
//! that lists every replicated column with a comment saying why.

use std::fmt::Write;

use super::detect::{PiiKind, TypeClass};
use super::scan::{ColumnReport, ScanReport};
use crate::catalog::SourceSchema;

/// A transformer parameter value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Bool(bool),
    Int(i64),
    Str(String),
}

/// The transformer chosen for one column.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub name: &'static str,
    pub params: Vec<(&'static str, Param)>,
    /// Set when no transformer fits (the column stays `keep`): why, for the reviewer.
    pub review: Option<String>,
}

impl Choice {
    fn new(name: &'static str, params: Vec<(&'static str, Param)>) -> Choice {
        Choice { name, params, review: None }
    }

    fn keep_for_review(why: String) -> Choice {
        Choice { name: "keep", params: Vec::new(), review: Some(why) }
    }

    /// `name {k: v, ...}`, for the summary.
    pub fn describe(&self) -> String {
        if self.params.is_empty() {
            return self.name.to_string();
        }
        let ps: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}: {}", yaml_param(v))).collect();
        format!("{} {{{}}}", self.name, ps.join(", "))
    }
}

/// A hash as long as the column allows (16..=32 characters), for unique text columns.
fn unique_text(c: &ColumnReport, kind: PiiKind) -> Choice {
    match c.max_len {
        Some(n) if n < 16 => Choice::keep_for_review(format!(
            "{} column {} is unique and only {n} characters long: no unique-keeping transformer fits; left as keep",
            kind.label(),
            c.type_name
        )),
        Some(n) => Choice::new("hash", vec![("length", Param::Int(n.min(32) as i64))]),
        None => Choice::new("hash", vec![("length", Param::Int(32))]),
    }
}

/// The transformer for a column: `keep` when no PII was guessed; else one that fits
/// the kind and the type, keeps distinct values distinct on a unique column
/// (`Transformer::keeps_unique`), and stays within a varchar(n) limit.
pub fn choose(c: &ColumnReport) -> Choice {
    let Some(guess) = &c.guess else { return Choice::new("keep", Vec::new()) };
    let kind = guess.kind;
    let text = c.class == TypeClass::Text;
    let digits_only =
        || Choice::new("regex_replace", vec![("pattern", Param::Str("[0-9]".into())), ("replacement", Param::Str("0".into()))]);
    if c.unique {
        if text {
            return match (kind, c.max_len) {
                (PiiKind::Email, None) => Choice::new("neosync_email", vec![("preserve_domain", Param::Bool(true))]),
                (PiiKind::Email, Some(n)) if n >= 64 => Choice::new("neosync_email", vec![("preserve_domain", Param::Bool(true))]),
                _ => unique_text(c, kind),
            };
        }
        return Choice::keep_for_review(format!(
            "{} column of type {} is unique: no unique-keeping transformer fits the type; left as keep",
            kind.label(),
            c.type_name
        ));
    }
    let bounded = c.max_len.is_some();
    match kind {
        PiiKind::Email => {
            Choice::new("neosync_email", vec![("preserve_domain", Param::Bool(true)), ("preserve_length", Param::Bool(true))])
        }
        PiiKind::FirstName => Choice::new("first_name", vec![("preserve_length", Param::Bool(bounded))]),
        PiiKind::LastName => Choice::new("last_name", vec![("preserve_length", Param::Bool(bounded))]),
        PiiKind::FullName => Choice::new("full_name", vec![("preserve_length", Param::Bool(bounded))]),
        PiiKind::Phone => Choice::new("phone", Vec::new()),
        // Generated addresses are at most 32 characters; a tighter column gets a string.
        PiiKind::Address if c.max_len.is_some_and(|n| n < 32) => Choice::new("string", Vec::new()),
        PiiKind::Address => Choice::new("address", Vec::new()),
        PiiKind::CardNumber => digits_only(),
        PiiKind::NationalId if text => {
            Choice::new("regex_replace", vec![("pattern", Param::Str("[0-9A-Za-z]".into())), ("replacement", Param::Str("X".into()))])
        }
        PiiKind::NationalId => digits_only(),
        // A hash keeps joins on addresses; a column too short for one, or of type
        // inet/cidr, gets every number zeroed (0.0.0.0/0 is still a valid inet).
        PiiKind::IpAddress if text && c.max_len.is_none_or(|n| n >= 16) => unique_text(c, kind),
        PiiKind::IpAddress => {
            Choice::new("regex_replace", vec![("pattern", Param::Str("[0-9A-Fa-f]+".into())), ("replacement", Param::Str("0".into()))])
        }
        PiiKind::BirthDate => Choice::new("date_noise", vec![("days", Param::Int(365))]),
        PiiKind::FreeText if c.class == TypeClass::Json && c.not_null => Choice::new("literal", vec![("value", Param::Str("{}".into()))]),
        PiiKind::FreeText if c.class == TypeClass::Json => Choice::new("null", Vec::new()),
        PiiKind::FreeText => Choice::new("string", Vec::new()),
    }
}

/// A YAML key or scalar: plain when that is unambiguous, else double-quoted.
pub fn yaml_str(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !["null", "true", "false", "yes", "no", "on", "off", "y", "n"].contains(&s.to_ascii_lowercase().as_str());
    if plain {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn yaml_param(p: &Param) -> String {
    match p {
        Param::Bool(b) => b.to_string(),
        Param::Int(i) => i.to_string(),
        Param::Str(s) => format!("'{}'", s.replace('\'', "''")),
    }
}

/// One line of comment text (control characters from names or values replaced).
fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Why a column got what it got, for its comment and the summary.
pub fn reason(c: &ColumnReport, report: &ScanReport, unreadable: Option<&str>) -> String {
    if let Some(g) = &c.guess {
        return format!("guess: {}", g.evidence);
    }
    if let Some(why) = unreadable {
        return format!("NOT SAMPLED ({why}); no PII in the name");
    }
    if !c.class.sampled() {
        return format!("no PII in the name; type {} not sampled", c.type_name);
    }
    match c.sampled {
        0 if report.sample == 0 => "no PII in the name; values not sampled (--sample 0)".into(),
        0 => "no PII in the name; no non-null values to sample".into(),
        n => format!("no PII seen in {n} sampled values"),
    }
}

/// The transform config for a scan: a header, then every replicated column of every
/// table with its transformer and a comment saying why. Parses with
/// `TransformConfig::parse` and passes strict validation against `schema`.
pub fn to_yaml(report: &ScanReport, schema: &SourceSchema) -> String {
    let mut y = String::new();
    let source = if report.source.is_empty() { "the source".to_string() } else { report.source.clone() };
    let _ = writeln!(y, "# Generated by `pgbranch pii scan` on {} from {}", report.date, comment(&source));
    let _ = writeln!(y, "# (up to {} non-null values sampled per column).", report.sample);
    y.push_str(
        "#\n\
         # Every replicated column of every table is listed. Lines marked `# guess:` are the\n\
         # scanner's guesses of PII, by column name and by sampled values: REVIEW EVERY GUESS,\n\
         # and every `keep`, before using this file. The scan misses PII it cannot recognise\n\
         # (free text, JSON, codes), and a wrong guess can mask data you need. `# REVIEW:`\n\
         # marks PII for which no transformer fits the column; it is left as `keep`.\n\
         # Generated columns are not replicated (the target computes them) and are not listed.\n",
    );
    y.push_str("transformations:\n  table_transformers:");
    if schema.tables.is_empty() {
        y.push_str(" []\n");
        return y;
    }
    y.push('\n');
    for t in &schema.tables {
        let tr = report.tables.iter().find(|r| r.table == t.qualified());
        let _ = writeln!(y, "    - schema: {}", yaml_str(&t.schema));
        let _ = writeln!(y, "      table: {}", yaml_str(&t.name));
        if let Some(why) = tr.and_then(|r| r.unreadable.as_deref()) {
            let _ = writeln!(y, "      # NOT SAMPLED: {}; guesses by column name only", comment(why));
        }
        if !t.generated.is_empty() {
            let _ = writeln!(y, "      # generated on the target, not replicated: {}", comment(&t.generated.join(", ")));
        }
        if t.columns.is_empty() {
            y.push_str("      column_transformers: {}\n");
            continue;
        }
        y.push_str("      column_transformers:\n");
        for col in &t.columns {
            let c = tr.and_then(|r| r.columns.iter().find(|c| c.name == col.name));
            let (choice, why) = match c {
                Some(c) => {
                    let choice = choose(c);
                    let mut why = reason(c, report, tr.and_then(|r| r.unreadable.as_deref()));
                    if let Some(r) = &choice.review {
                        why = format!("REVIEW: {r}; {why}");
                    }
                    (choice, why)
                }
                None => (Choice::new("keep", Vec::new()), "NOT SCANNED (the table changed during the scan)".to_string()),
            };
            let _ = writeln!(y, "        {}:  # {}", yaml_str(&col.name), comment(&why));
            let _ = writeln!(y, "          name: {}", choice.name);
            if !choice.params.is_empty() {
                y.push_str("          parameters:\n");
                for (k, v) in &choice.params {
                    let _ = writeln!(y, "            {k}: {}", yaml_param(v));
                }
            }
        }
    }
    y
}

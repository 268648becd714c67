//! The transformers: each turns one column value into its masked form, deterministically
//! under the store's secret key, in memory.

use std::collections::BTreeMap;

use regex::Regex;

use super::{fpe, words};
use crate::civil_date::{civil_from_days, days_from_civil};

/// A column value as text (postgres' text output format), or NULL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Null,
    Text(String),
}

#[derive(Debug)]
pub enum Transformer {
    Keep,
    Null,
    Literal(String),
    Email { preserve_domain: bool, preserve_length: bool },
    FirstName { preserve_length: bool },
    LastName { preserve_length: bool },
    FullName { preserve_length: bool },
    Phone,
    Address,
    String,
    Hash { length: usize },
    IntNoise { min: i64, max: i64 },
    FloatNoise { min: f64, max: f64 },
    DateNoise { days: i64 },
    Choice(Vec<String>),
    Uuid,
    Regex { pattern: Regex, replacement: String },
    Template(String),
    Json { set: BTreeMap<String, serde_json::Value>, delete: Vec<String> },
}

pub enum BuildError {
    Unknown,
    Parameter(String),
}

/// Deterministic bytes for one (transformer, value) pair under the key. The column is
/// not an input, so the same email masks the same way in every table. Read a block
/// at a time: each read of the output computes a whole 64-byte block.
struct Stream {
    reader: blake3::OutputReader,
    block: [u8; 64],
    used: usize,
}

impl Stream {
    fn new(key: &[u8; 32], tag: &str, value: &str) -> Stream {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(tag.as_bytes());
        h.update(&[0]);
        h.update(value.as_bytes());
        Stream { reader: h.finalize_xof(), block: [0; 64], used: 64 }
    }
    fn next(&mut self) -> u64 {
        if self.used == self.block.len() {
            self.reader.fill(&mut self.block);
            self.used = 0;
        }
        let b: [u8; 8] = self.block[self.used..self.used + 8].try_into().unwrap();
        self.used += 8;
        u64::from_le_bytes(b)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }
    fn letters(&mut self, len: usize) -> String {
        (0..len).map(|_| (b'a' + self.below(26) as u8) as char).collect()
    }
    fn alnum(&mut self, len: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| A[self.below(A.len() as u64) as usize] as char).collect()
    }
}

fn fit(mut s: String, len: usize, rng: &mut Stream) -> String {
    if s.chars().count() > len {
        s = s.chars().take(len).collect();
        // "Bianca Ng" cut to 7 would end in a space; end on a letter instead.
        if s.ends_with(' ') {
            s.pop();
            s.push_str(&rng.letters(1).to_uppercase());
        }
    }
    while s.chars().count() < len {
        s.push_str(&rng.letters(1));
    }
    s
}

fn param_bool(p: &yaml_serde::Value, key: &str) -> Result<bool, BuildError> {
    match p.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| BuildError::Parameter(format!("parameter '{key}' must be true or false"))),
    }
}

fn param_i64(p: &yaml_serde::Value, key: &str, default: i64) -> Result<i64, BuildError> {
    match p.get(key) {
        None => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| BuildError::Parameter(format!("parameter '{key}' must be an integer"))),
    }
}

fn param_str(p: &yaml_serde::Value, key: &str) -> Result<String, BuildError> {
    p.get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| BuildError::Parameter(format!("parameter '{key}' (a string) is required")))
}

impl Transformer {
    pub const NAMES: &'static [&'static str] = &[
        "keep",
        "null",
        "literal",
        "email",
        "neosync_email",
        "first_name",
        "neosync_firstname",
        "last_name",
        "neosync_lastname",
        "full_name",
        "neosync_fullname",
        "phone",
        "address",
        "string",
        "hash",
        "int_noise",
        "float_noise",
        "date_noise",
        "choice",
        "uuid",
        "regex_replace",
        "template",
        "json",
        "masking",
    ];

    pub fn from_config(name: &str, p: &yaml_serde::Value) -> Result<Transformer, BuildError> {
        Ok(match name {
            "keep" => Transformer::Keep,
            "null" => Transformer::Null,
            "literal" => Transformer::Literal(param_str(p, "value")?),
            "email" | "neosync_email" => Transformer::Email {
                preserve_domain: param_bool(p, "preserve_domain")?,
                preserve_length: param_bool(p, "preserve_length")?,
            },
            "first_name" | "neosync_firstname" => Transformer::FirstName { preserve_length: param_bool(p, "preserve_length")? },
            "last_name" | "neosync_lastname" => Transformer::LastName { preserve_length: param_bool(p, "preserve_length")? },
            "full_name" | "neosync_fullname" => Transformer::FullName { preserve_length: param_bool(p, "preserve_length")? },
            "phone" => Transformer::Phone,
            "address" => Transformer::Address,
            "string" => Transformer::String,
            "hash" => {
                let length = param_i64(p, "length", 32)?;
                if !(8..=64).contains(&length) {
                    return Err(BuildError::Parameter("parameter 'length' must be between 8 and 64".into()));
                }
                Transformer::Hash { length: length as usize }
            }
            "int_noise" => {
                let (min, max) = (param_i64(p, "min", -10)?, param_i64(p, "max", 10)?);
                if min > max {
                    return Err(BuildError::Parameter(format!("min ({min}) is greater than max ({max})")));
                }
                Transformer::IntNoise { min, max }
            }
            "float_noise" => {
                let f = |k: &str, d: f64| {
                    p.get(k).map_or(Ok(d), |v| v.as_f64().ok_or_else(|| BuildError::Parameter(format!("parameter '{k}' must be a number"))))
                };
                let (min, max) = (f("min", -1.0)?, f("max", 1.0)?);
                if min > max {
                    return Err(BuildError::Parameter(format!("min ({min}) is greater than max ({max})")));
                }
                Transformer::FloatNoise { min, max }
            }
            "date_noise" => {
                let days = param_i64(p, "days", 30)?;
                if days < 0 {
                    return Err(BuildError::Parameter("parameter 'days' must not be negative".into()));
                }
                Transformer::DateNoise { days }
            }
            "choice" => {
                let values: Vec<String> = p
                    .get("values")
                    .and_then(|v| v.as_sequence())
                    .map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if values.is_empty() {
                    return Err(BuildError::Parameter("parameter 'values' must be a non-empty list of strings".into()));
                }
                Transformer::Choice(values)
            }
            "uuid" => Transformer::Uuid,
            "regex_replace" => {
                let pattern = param_str(p, "pattern")?;
                let pattern = Regex::new(&pattern).map_err(|e| BuildError::Parameter(format!("invalid pattern: {e}")))?;
                Transformer::Regex { pattern, replacement: param_str(p, "replacement")? }
            }
            "template" => Transformer::Template(param_str(p, "template")?),
            "json" => {
                let set = match p.get("set") {
                    None => BTreeMap::new(),
                    Some(v) => serde_json::to_value(v)
                        .ok()
                        .and_then(|j| serde_json::from_value(j).ok())
                        .ok_or_else(|| BuildError::Parameter("parameter 'set' must be a mapping".into()))?,
                };
                let delete = p
                    .get("delete")
                    .and_then(|v| v.as_sequence())
                    .map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                Transformer::Json { set, delete }
            }
            "masking" => match p.get("type").and_then(|t| t.as_str()) {
                Some("address") => Transformer::Address,
                Some("email") => Transformer::Email { preserve_domain: true, preserve_length: false },
                Some("phone") => Transformer::Phone,
                Some("name") | Some("full_name") => Transformer::FullName { preserve_length: false },
                Some("first_name") => Transformer::FirstName { preserve_length: false },
                Some("last_name") => Transformer::LastName { preserve_length: false },
                Some("string") => Transformer::String,
                Some(other) => {
                    return Err(BuildError::Parameter(format!(
                        "unknown masking type '{other}' (address, email, phone, name, first_name, last_name, string)"
                    )))
                }
                None => return Err(BuildError::Parameter("parameter 'type' is required".into())),
            },
            _ => return Err(BuildError::Unknown),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Transformer::Keep => "keep",
            Transformer::Null => "null",
            Transformer::Literal(_) => "literal",
            Transformer::Email { .. } => "email",
            Transformer::FirstName { .. } => "first_name",
            Transformer::LastName { .. } => "last_name",
            Transformer::FullName { .. } => "full_name",
            Transformer::Phone => "phone",
            Transformer::Address => "address",
            Transformer::String => "string",
            Transformer::Hash { .. } => "hash",
            Transformer::IntNoise { .. } => "int_noise",
            Transformer::FloatNoise { .. } => "float_noise",
            Transformer::DateNoise { .. } => "date_noise",
            Transformer::Choice(_) => "choice",
            Transformer::Uuid => "uuid",
            Transformer::Regex { .. } => "regex_replace",
            Transformer::Template(_) => "template",
            Transformer::Json { .. } => "json",
        }
    }

    /// Whether distinct inputs always give distinct outputs (for unique columns).
    pub fn keeps_unique(&self) -> bool {
        match self {
            Transformer::Keep | Transformer::Uuid => true,
            Transformer::Hash { length } => *length >= 16,
            // Either a keyed permutation (preserve_length) or 20 random characters
            // drawn from the value's keyed hash (a collision is ~2^-100 likely).
            Transformer::Email { .. } => true,
            _ => false,
        }
    }

    pub fn is_template(&self) -> bool {
        matches!(self, Transformer::Template(_))
    }

    /// Transforms one value; `row` holds the row's other (transformed) columns.
    pub fn apply(&self, key: &[u8; 32], _column: &str, value: &Value, row: &BTreeMap<String, Value>) -> Value {
        let text = match value {
            Value::Null => {
                return if matches!(self, Transformer::Literal(_) | Transformer::Template(_)) {
                    self.apply(key, _column, &Value::Text(String::new()), row)
                } else {
                    Value::Null
                }
            }
            Value::Text(t) => t.as_str(),
        };
        let mut rng = Stream::new(key, self.name(), text);
        let out = match self {
            Transformer::Keep => text.to_string(),
            Transformer::Null => return Value::Null,
            Transformer::Literal(v) => v.clone(),
            Transformer::Email { preserve_domain, preserve_length } => {
                let (local, domain) = text.rsplit_once('@').unwrap_or((text, "example.com"));
                // Length-preserving masking is a keyed permutation (format-preserving),
                // so distinct emails stay distinct: fine under a unique index.
                let new_local = if *preserve_length { fpe::mask_alnum(key, "email-local", local) } else { rng.alnum(20) };
                let new_domain = if *preserve_domain {
                    domain.to_string()
                } else if *preserve_length {
                    let (name, tld) = domain.rsplit_once('.').unwrap_or((domain, "com"));
                    format!("{}.{tld}", fpe::mask_alnum(key, "email-domain", name))
                } else {
                    rng.pick(&["example.com", "example.net", "example.org"]).to_string()
                };
                format!("{new_local}@{new_domain}")
            }
            Transformer::FirstName { preserve_length } => {
                let n = rng.pick(words::FIRST_NAMES).to_string();
                if *preserve_length {
                    fit(n, text.chars().count(), &mut rng)
                } else {
                    n
                }
            }
            Transformer::LastName { preserve_length } => {
                let n = rng.pick(words::LAST_NAMES).to_string();
                if *preserve_length {
                    fit(n, text.chars().count(), &mut rng)
                } else {
                    n
                }
            }
            Transformer::FullName { preserve_length } => {
                let n = format!("{} {}", rng.pick(words::FIRST_NAMES), rng.pick(words::LAST_NAMES));
                if *preserve_length {
                    fit(n, text.chars().count(), &mut rng)
                } else {
                    n
                }
            }
            Transformer::Phone => {
                let mut first = true;
                text.chars()
                    .map(|c| {
                        if c.is_ascii_digit() {
                            let d = if first && c != '0' { 1 + rng.below(9) } else { rng.below(10) };
                            first = false;
                            char::from(b'0' + d as u8)
                        } else {
                            c
                        }
                    })
                    .collect()
            }
            Transformer::Address => format!(
                "{} {} {}, {}",
                1 + rng.below(9999),
                rng.pick(words::STREETS),
                rng.pick(words::STREET_SUFFIXES),
                rng.pick(words::CITIES)
            ),
            Transformer::String => rng.alnum(text.chars().count()),
            Transformer::Hash { length } => {
                let mut h = blake3::Hasher::new_keyed(key);
                h.update(b"hash\0");
                h.update(text.as_bytes());
                h.finalize().to_hex()[..*length].to_string()
            }
            Transformer::IntNoise { min, max } => {
                let base: i64 = text.trim().parse().unwrap_or(0);
                let span = (*max - *min) as u64 + 1;
                base.saturating_add(*min + rng.below(span) as i64).to_string()
            }
            Transformer::FloatNoise { min, max } => {
                let base: f64 = text.trim().parse().unwrap_or(0.0);
                let unit = rng.next() as f64 / u64::MAX as f64;
                (base + min + unit * (max - min)).to_string()
            }
            Transformer::DateNoise { days } => {
                let parse = |s: &str| -> Option<(i64, i64, i64)> {
                    let mut it = s.get(..10)?.split('-');
                    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
                };
                match parse(text) {
                    Some((y, m, d)) => {
                        let shift = rng.below((2 * days + 1) as u64) as i64 - days;
                        let (y, m, d) = civil_from_days(days_from_civil(y, m, d) + shift);
                        format!("{y:04}-{m:02}-{d:02}{}", &text[10..])
                    }
                    None => return Value::Null,
                }
            }
            Transformer::Choice(values) => values[rng.below(values.len() as u64) as usize].clone(),
            Transformer::Uuid => {
                let mut b = [0u8; 16];
                for chunk in b.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next().to_le_bytes());
                }
                b[6] = (b[6] & 0x0f) | 0x40;
                b[8] = (b[8] & 0x3f) | 0x80;
                let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
            }
            Transformer::Regex { pattern, replacement } => pattern.replace_all(text, replacement.as_str()).into_owned(),
            Transformer::Template(t) => {
                let mut out = t.clone();
                for (col, v) in row {
                    let v = match v {
                        Value::Text(s) => s.as_str(),
                        Value::Null => "",
                    };
                    out = out.replace(&format!("{{{col}}}"), v);
                }
                out
            }
            Transformer::Json { set, delete } => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(mut map)) => {
                    for k in delete {
                        map.remove(k);
                    }
                    for (k, v) in set {
                        map.insert(k.clone(), v.clone());
                    }
                    serde_json::Value::Object(map).to_string()
                }
                _ => return Value::Null,
            },
        };
        Value::Text(out)
    }
}

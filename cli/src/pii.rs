//! `pgbranch pii scan`: connects to the source (no daemon needed), reads its replicated
//! schema, samples every column, and writes a transform config covering every column
//! (to a file, never over an existing one without --force, or to stdout), with a
//! summary of the guesses on stderr.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use pgbranch_replicator::catalog::SourceSchema;
use pgbranch_replicator::pii::{self, choose, config_writer, ScanReport};
use pgbranch_replicator::source::Source;
use pgbranch_replicator::transform::TransformConfig;

pub const DEFAULT_SAMPLE: usize = 1000;

/// Scans the source at `source_url` and writes the config to `write` (else stdout).
pub fn scan(source_url: &str, write: Option<&Path>, sample: usize, force: bool) -> Result<()> {
    if let Some(path) = write {
        if path.exists() && !force {
            bail!("{} already exists; pass --force to overwrite it (nothing was scanned)", path.display());
        }
    }
    let source = Source::parse(source_url)?;
    let mut client = source.connect()?;
    let schema = SourceSchema::read(&mut client).context("reading the source's tables and columns")?;
    let mut report = pii::scan(&mut client, &schema, sample).context("sampling the source's columns")?;
    report.source = redact(source_url);
    let yaml = pii::to_yaml(&report, &schema);

    // The file must be usable as written: parse it and validate it strictly.
    let file = write.map_or("transform.yaml".to_string(), |p| p.display().to_string());
    let (columns, unique) = schema.validation_inputs();
    const BUG: &str = "internal error: the generated config does not validate (please report this)";
    let cfg = TransformConfig::parse(&file, &yaml).context(BUG)?;
    cfg.validate(&columns, &unique, true).context(BUG)?;

    match write {
        Some(path) => write_file(path, &yaml, force)?,
        None => std::io::stdout().write_all(yaml.as_bytes()).context("writing the config to stdout")?,
    }
    eprint!("{}", summary(&report));
    if let Some(path) = write {
        eprintln!("wrote {}; review every guess before using it", path.display());
    }
    Ok(())
}

/// Creates `path` (refusing an existing file unless `force`; then replaced atomically).
fn write_file(path: &Path, text: &str, force: bool) -> Result<()> {
    if !force {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!("{} already exists; pass --force to overwrite it", path.display())
            } else {
                anyhow::Error::new(e).context(format!("creating {}", path.display()))
            }
        })?;
        return f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()));
    }
    crate::files::write_atomic(path, text.as_bytes(), 0o666)
}

/// One line per column: table.column, type, guess (kind -> transformer), evidence.
pub(crate) fn summary(report: &ScanReport) -> String {
    let mut rows = vec![["COLUMN".to_string(), "TYPE".into(), "GUESS".into(), "EVIDENCE".into()]];
    let (mut total, mut guessed, mut review) = (0, 0, 0);
    for t in &report.tables {
        for c in &t.columns {
            total += 1;
            let choice = choose(c);
            let guess = match &c.guess {
                Some(g) => {
                    guessed += 1;
                    let mut s = format!("{} -> {}", g.kind.label(), choice.name);
                    if choice.review.is_some() {
                        review += 1;
                        s.push_str(" (REVIEW)");
                    }
                    s
                }
                None => "-".into(),
            };
            let mut why = config_writer::reason(c, report, t.unreadable.as_deref());
            why = why.strip_prefix("guess: ").map(str::to_string).unwrap_or(why);
            if let Some(r) = &choice.review {
                why = format!("REVIEW: {r}; {why}");
            }
            rows.push([format!("{}.{}", t.table, c.name), c.type_name.clone(), guess, why]);
        }
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).min(48);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for r in &rows {
        let line = format!("{:w0$}  {:w1$}  {:w2$}  {}", r[0], r[1], r[2], r[3]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "\n{} tables, {total} columns: {guessed} look like PII{}; every guess needs review\n",
        report.tables.len(),
        if review > 0 { format!(" ({review} marked REVIEW: no transformer fits, left as keep)") } else { String::new() }
    ));
    out
}

/// The source URL with its password hidden: `scheme://user:***@host/...`, and any
/// `password=...` (query parameter or key=value connection string) as `password=***`.
/// TLS parameters (file paths, which may hold an `@`) are kept as they are.
pub(crate) fn redact(url: &str) -> String {
    let before_query = &url[..url.find('?').unwrap_or(url.len())];
    let mut out = match (url.find("://"), before_query.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    };
    let mut from = 0;
    while let Some(i) = out[from..].find("password=").map(|i| i + from) {
        let start = i + "password=".len();
        let end = out[start..].find(['&', ' ']).map_or(out.len(), |e| e + start);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgresql://u:secret@h:5432/db"), "postgresql://u:***@h:5432/db");
        assert_eq!(redact("postgresql://u@h/db?password=secret&sslmode=disable"), "postgresql://u@h/db?password=***&sslmode=disable");
        assert_eq!(redact("host=h user=u password=secret dbname=d"), "host=h user=u password=*** dbname=d");
        assert_eq!(redact("postgresql://h/db"), "postgresql://h/db");
        assert_eq!(
            redact("postgresql://u:p@ss@h/db?sslmode=verify-full&sslrootcert=/etc/ca@2.pem&sslcert=/c.crt&sslkey=/c.key&channel_binding=require"),
            "postgresql://u:***@h/db?sslmode=verify-full&sslrootcert=/etc/ca@2.pem&sslcert=/c.crt&sslkey=/c.key&channel_binding=require"
        );
        assert_eq!(redact("postgresql://h/db?sslrootcert=/a@b&password=x"), "postgresql://h/db?sslrootcert=/a@b&password=***");
        assert_eq!(redact("host=h password=secret sslmode=require sslkey=/k"), "host=h password=*** sslmode=require sslkey=/k");
    }
}

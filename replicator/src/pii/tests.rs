use std::collections::BTreeSet;

use super::config_writer::{choose, to_yaml, yaml_str, Param};
use super::detect::*;
use super::scan::{ColumnReport, ScanReport, TableReport};
use crate::catalog::{Column, SourceSchema, Table};
use crate::civil_date::{civil_date, days_from_civil};
use crate::transform::TransformConfig;

/// 2025-06-01, so ages in these tests do not drift.
fn today() -> i64 {
    days_from_civil(2025, 6, 1)
}

fn vals(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn names_suggest_kinds_and_modifiers_cancel_them() {
    let cases = [
        ("email", Some(PiiKind::Email)),
        ("contactEmail", Some(PiiKind::Email)),
        ("email_address", Some(PiiKind::Email)),
        ("phone", Some(PiiKind::Phone)),
        ("mobile_number", Some(PiiKind::Phone)),
        ("PhoneNumber", Some(PiiKind::Phone)),
        ("first_name", Some(PiiKind::FirstName)),
        ("firstname", Some(PiiKind::FirstName)),
        ("surname", Some(PiiKind::LastName)),
        ("last_name", Some(PiiKind::LastName)),
        ("full_name", Some(PiiKind::FullName)),
        ("customer_name", Some(PiiKind::FullName)),
        ("address", Some(PiiKind::Address)),
        ("billing_address_line1", Some(PiiKind::Address)),
        ("street", Some(PiiKind::Address)),
        ("dob", Some(PiiKind::BirthDate)),
        ("birth_date", Some(PiiKind::BirthDate)),
        ("date_of_birth", Some(PiiKind::BirthDate)),
        ("card_number", Some(PiiKind::CardNumber)),
        ("credit_card", Some(PiiKind::CardNumber)),
        ("ip_address", Some(PiiKind::IpAddress)),
        ("last_login_ip", Some(PiiKind::IpAddress)),
        ("ssn", Some(PiiKind::NationalId)),
        ("national_id", Some(PiiKind::NationalId)),
        ("passport_number", Some(PiiKind::NationalId)),
        ("notes", Some(PiiKind::FreeText)),
        ("comment", Some(PiiKind::FreeText)),
        // Not PII, or about PII without being it.
        ("id", None),
        ("name", None),
        ("status", None),
        ("sku", None),
        ("zip", None),
        ("email_verified", None),
        ("phone_count", None),
        ("card_type", None),
        ("has_email", None),
        ("ip_country", None),
        ("mac_address", None),
        ("wallet_address", None),
        ("shipping_ip_id", None),
        ("mailbox", None),
    ];
    for (name, want) in cases {
        assert_eq!(by_name(name), want, "{name}");
    }
    assert_eq!(tokens("billingAddress_2"), ["billing", "address", "2"]);
}

#[test]
fn values_are_recognised_by_their_shape() {
    assert!(is_email("jane.doe+x@mail.example.co.uk"));
    assert!(!is_email("jane@localhost") && !is_email("write to jane@x.io"));
    assert!(luhn("4111111111111111") && !luhn("4111111111111112"));
    assert!(is_card_number("4111 1111 1111 1111") && is_card_number("5500-0000-0000-0004") && is_card_number("378282246310005"));
    assert!(!is_card_number("4111111111111112") && !is_card_number("1234567812345670"), "Luhn and network digit");
    assert!(is_ssn("123-45-6789") && !is_ssn("000-12-3456") && !is_ssn("666-12-3456") && !is_ssn("123-45-67890"));
    assert!(is_ip("192.168.1.20") && is_ip("10.0.0.1/32") && is_ip("2001:db8::1") && is_ip("::1/128"));
    assert!(!is_ip("1.2.3") && !is_ip("300.1.1.1") && !is_ip("12:30:45"));
    for p in ["+1 (555) 123-4567", "555-123-4567", "+44 20 7946 0958", "(02) 9876 5432", "555.123.4567", "555-1234 ext. 12"] {
        assert!(is_phone(p), "{p}");
    }
    for p in [
        "2024-01-02",
        "12.03.2024",
        "192.168.1.20",
        "123-45-6789",
        "4111 1111 1111 1111",
        "12345678",
        "3.14159265",
        "-1234567",
        "12-34",
        "12345-6789",
    ] {
        assert!(!is_phone(p), "{p}");
    }
    assert_eq!(classify_value("42 Maple Street, Springfield"), Some(PiiKind::Address));
    assert_eq!(classify_value("PO Box 1234"), Some(PiiKind::Address));
    assert_eq!(classify_value("pending"), None);
    assert_eq!(is_birth_date("1985-04-12", today()), Some(1985));
    assert_eq!(is_birth_date("2024-04-12", today()), None, "too young");
    assert_eq!(is_birth_date("1900-01-01", today()), None, "too old");
    let found = embedded("Call me at 555-867-5309 or mail jo@example.org; card 4111-1111-1111-1111, from 10.1.2.3");
    assert_eq!(found, BTreeSet::from([PiiKind::Email, PiiKind::Phone, PiiKind::CardNumber, PiiKind::IpAddress]), "{found:?}");
    assert!(embedded("shipped 3 boxes on 2024-01-02, order 12345678, v1.2.3").is_empty());
    assert_eq!(civil_date(days_from_civil(2024, 2, 29)), "2024-02-29");
    assert_eq!(max_len("character varying(40)"), Some(40));
    assert_eq!(max_len("character(2)"), Some(2));
    assert_eq!(max_len("text"), None);
}

#[test]
fn columns_are_judged_by_name_type_and_values() {
    let t = today();
    let emails = vals(&["a@x.io", "b@y.org", "c@z.com", "not an email", "d@w.net"]);
    let g = judge("contact", "text", TypeClass::Text, &emails, t).unwrap();
    assert_eq!(g.kind, PiiKind::Email);
    assert_eq!(g.evidence, "4/5 sampled values look like emails");
    let g = judge("email", "text", TypeClass::Text, &emails, t).unwrap();
    assert_eq!(g.evidence, "name 'email'; 4/5 sampled values look like emails");
    let g = judge("email", "text", TypeClass::Text, &[], t).unwrap();
    assert_eq!(g.evidence, "name 'email'; no non-null values sampled");
    let g = judge("contact_addr", "text", TypeClass::Text, &emails, t).unwrap();
    assert_eq!(g.kind, PiiKind::Email, "values overrule a name they clearly contradict");
    assert_eq!(g.evidence, "4/5 sampled values look like emails; the name 'contact_addr' suggests address");
    let g = judge("phone", "text", TypeClass::Text, &vals(&["555-123-4567", "a@b.io", "c@d.io", "e@f.io"]), t).unwrap();
    assert_eq!(g.kind, PiiKind::Phone, "a name with some support in the values stands");
    assert_eq!(g.evidence, "name 'phone'; 1/4 sampled values look like phone numbers; but 3/4 sampled values look like emails");
    assert_eq!(judge("email_verified", "boolean", TypeClass::Boolean, &[], t), None);
    assert_eq!(judge("email", "boolean", TypeClass::Boolean, &[], t), None, "the type cannot hold an email");

    let notes = vals(&["call back at 555-201-3344", "prefers mornings", "left a voicemail", "no answer"]);
    let g = judge("notes", "text", TypeClass::Text, &notes, t).unwrap();
    assert_eq!(g.kind, PiiKind::FreeText);
    assert!(g.evidence.starts_with("name 'notes' (free text); 1/4 sampled values contain PII (phone numbers in 1)"), "{}", g.evidence);
    assert_eq!(judge("notes", "text", TypeClass::Text, &vals(&["fragile", "gift wrap"]), t), None);

    let ips = vals(&["10.0.0.1", "192.168.7.9", "2001:db8::7"]);
    assert_eq!(judge("meta", "text", TypeClass::Text, &ips, t).unwrap().kind, PiiKind::IpAddress);
    let g = judge("seen_from", "inet", TypeClass::Inet, &vals(&["10.0.0.1/32"]), t).unwrap();
    assert_eq!((g.kind, g.evidence.as_str()), (PiiKind::IpAddress, "type inet; 1/1 sampled values look like IP addresses"));

    let names = vals(&["Jane Doe", "John Smith", "Maria Garcia", "Zed Quux", "Ann Lee"]);
    assert_eq!(judge("name", "text", TypeClass::Text, &names, t).unwrap().kind, PiiKind::FullName);
    let firsts = vals(&["James", "Mary", "Xavi", "Linda", "Robert"]);
    assert_eq!(judge("who", "text", TypeClass::Text, &firsts, t).unwrap().kind, PiiKind::FirstName);
    let products = vals(&["Blue Widget", "Red Gadget", "Steel Bolt", "Oak Table"]);
    assert_eq!(judge("name", "text", TypeClass::Text, &products, t), None);
    let statuses = vals(&["active", "pending", "shipped"]);
    assert_eq!(judge("status", "text", TypeClass::Text, &statuses, t), None);

    let dobs = vals(&["1980-01-02", "1975-07-30", "1990-12-12", "2001-03-04", "1966-05-05"]);
    assert_eq!(judge("born", "date", TypeClass::Date, &dobs, t).unwrap().kind, PiiKind::BirthDate);
    let recent = vals(&["2024-01-02", "2023-07-30", "2022-12-12", "2021-03-04", "2025-05-05"]);
    assert_eq!(judge("shipped_on", "date", TypeClass::Date, &recent, t), None);
    let cards = vals(&["4111111111111111", "5500000000000004", "4012888888881881"]);
    assert_eq!(judge("pan_value", "bigint", TypeClass::Integer, &cards, t).unwrap().kind, PiiKind::CardNumber);
    let ids = vals(&["1", "2", "3", "1000000001", "5551234567"]);
    assert_eq!(judge("id", "bigint", TypeClass::Integer, &ids, t), None);
}

fn col(name: &str, type_name: &str, class: TypeClass, unique: bool, not_null: bool, guess: Option<PiiKind>) -> ColumnReport {
    ColumnReport {
        name: name.into(),
        type_name: type_name.into(),
        class,
        max_len: max_len(type_name),
        not_null,
        unique,
        sampled: 10,
        guess: guess.map(|kind| Guess { kind, evidence: format!("test {}", kind.label()) }),
    }
}

#[test]
fn transformers_fit_kind_type_length_and_uniqueness() {
    use TypeClass::*;
    let c = |n, t, cl, u, g| choose(&col(n, t, cl, u, false, g));
    let email = c("e", "text", Text, false, Some(PiiKind::Email));
    assert_eq!((email.name, email.params.len()), ("neosync_email", 2));
    let email = c("e", "text", Text, true, Some(PiiKind::Email));
    assert_eq!(email.describe(), "neosync_email {preserve_domain: true}", "unique: no preserve_length");
    assert_eq!(c("e", "character varying(40)", Text, true, Some(PiiKind::Email)).describe(), "hash {length: 32}");
    assert_eq!(c("e", "character varying(20)", Text, true, Some(PiiKind::Email)).describe(), "hash {length: 20}");
    let tiny = c("e", "character varying(10)", Text, true, Some(PiiKind::Email));
    assert_eq!(tiny.name, "keep");
    assert!(tiny.review.is_some());
    assert!(c("p", "bigint", Integer, true, Some(PiiKind::Phone)).review.is_some());
    assert_eq!(c("p", "bigint", Integer, false, Some(PiiKind::Phone)).name, "phone");
    assert_eq!(c("n", "character varying(40)", Text, false, Some(PiiKind::FullName)).describe(), "full_name {preserve_length: true}");
    assert_eq!(c("n", "text", Text, false, Some(PiiKind::FirstName)).describe(), "first_name {preserve_length: false}");
    assert_eq!(c("a", "character varying(20)", Text, false, Some(PiiKind::Address)).name, "string");
    assert_eq!(c("a", "text", Text, false, Some(PiiKind::Address)).name, "address");
    assert_eq!(c("cc", "text", Text, false, Some(PiiKind::CardNumber)).describe(), "regex_replace {pattern: '[0-9]', replacement: '0'}");
    assert_eq!(c("ip", "inet", Inet, false, Some(PiiKind::IpAddress)).name, "regex_replace");
    assert_eq!(c("ip", "text", Text, false, Some(PiiKind::IpAddress)).name, "hash");
    assert_eq!(c("ip", "character varying(15)", Text, false, Some(PiiKind::IpAddress)).name, "regex_replace");
    assert_eq!(c("d", "date", Date, false, Some(PiiKind::BirthDate)).describe(), "date_noise {days: 365}");
    assert_eq!(c("t", "text", Text, false, Some(PiiKind::FreeText)).name, "string");
    assert_eq!(c("j", "jsonb", Json, false, Some(PiiKind::FreeText)).name, "null");
    let j = choose(&col("j", "jsonb", Json, false, true, Some(PiiKind::FreeText)));
    assert_eq!(j.params, [("value", Param::Str("{}".into()))]);
    assert_eq!(c("id", "bigint", Integer, true, None).name, "keep");
    assert_eq!(yaml_str("email"), "email");
    assert_eq!(yaml_str("null"), "\"null\"");
    assert_eq!(yaml_str("a \"b\": c"), "\"a \\\"b\\\": c\"");
}

fn table(schema: &str, name: &str, cols: &[(&str, &str)], unique: &[&str], generated: &[&str]) -> Table {
    Table {
        schema: schema.into(),
        name: name.into(),
        columns: cols
            .iter()
            .map(|(n, t)| Column { name: n.to_string(), type_name: t.to_string(), type_oid: 25, not_null: false })
            .collect(),
        generated: generated.iter().map(|s| s.to_string()).collect(),
        key: vec![],
        replica_identity: 'd',
        unique_columns: unique.iter().map(|s| s.to_string()).collect(),
        estimated_rows: 0,
        bytes: 0,
    }
}

#[test]
fn the_written_config_parses_covers_every_column_and_passes_strict_validation() {
    let schema = SourceSchema {
        tables: vec![
            table("Odd: Schema", "null", &[("id", "bigint"), ("we\"ird: name", "text"), ("true", "text")], &["id"], &[]),
            table("public", "empty", &[], &[], &["g"]),
            table(
                "public",
                "users",
                &[("id", "bigint"), ("email", "text"), ("phone", "text"), ("ip", "inet"), ("notes", "text"), ("code", "character(8)")],
                &["id", "email", "code"],
                &["shout"],
            ),
        ],
    };
    let users = TableReport {
        table: "public.users".into(),
        columns: vec![
            col("id", "bigint", TypeClass::Integer, true, true, None),
            col("email", "text", TypeClass::Text, true, false, Some(PiiKind::Email)),
            col("phone", "text", TypeClass::Text, false, false, Some(PiiKind::Phone)),
            col("ip", "inet", TypeClass::Inet, false, false, Some(PiiKind::IpAddress)),
            col("notes", "text", TypeClass::Text, false, false, Some(PiiKind::FreeText)),
            col("code", "character(8)", TypeClass::Text, true, false, Some(PiiKind::NationalId)),
        ],
        unreadable: None,
    };
    let odd =
        TableReport { table: "Odd: Schema.null".into(), columns: vec![], unreadable: Some("permission denied for table null".into()) };
    let report = ScanReport { source: "postgresql://u:***@h/db".into(), date: "2025-06-01".into(), sample: 10, tables: vec![odd, users] };
    let yaml = to_yaml(&report, &schema);
    let cfg = TransformConfig::parse("transform.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let (columns, unique) = schema.validation_inputs();
    cfg.validate(&columns, &unique, true).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert!(yaml.starts_with("# Generated by `pgbranch pii scan` on 2025-06-01 from postgresql://u:***@h/db"), "{yaml}");
    assert!(yaml.contains("        email:  # guess: test email\n          name: neosync_email\n"), "{yaml}");
    assert!(yaml.contains("        id:  # no PII seen in 10 sampled values\n          name: keep\n"), "{yaml}");
    assert!(yaml.contains("# REVIEW: national_id column character(8) is unique"), "{yaml}");
    assert!(yaml.contains("# NOT SAMPLED: permission denied"), "{yaml}");
    assert!(yaml.contains("# generated on the target, not replicated: shout"), "{yaml}");
    assert_eq!(cfg.tables["Odd: Schema.null"].len(), 3);
    assert!(cfg.tables["public.empty"].is_empty());

    let none = to_yaml(&report, &SourceSchema::default());
    TransformConfig::parse("t.yaml", &none).unwrap().validate(&Default::default(), &Default::default(), true).unwrap();
}

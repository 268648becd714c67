use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// The seed's transform file, verbatim.
const SEED: &str = include_str!("../../tests/fixtures/seed-transform.yaml");

const KEY: [u8; 32] = [7; 32];

fn row(email: &str, name: &str, address: &str) -> Vec<(String, Value)> {
    vec![
        ("id".into(), Value::Text("1".into())),
        ("email".into(), Value::Text(email.into())),
        ("full_name".into(), Value::Text(name.into())),
        ("address".into(), Value::Text(address.into())),
    ]
}

fn text(v: &Value) -> &str {
    match v {
        Value::Text(s) => s,
        Value::Null => panic!("null"),
    }
}

#[test]
fn the_seed_config_masks_as_it_says() {
    let cfg = TransformConfig::parse("transform.yaml", SEED).unwrap();
    let mut r = row("jane.doe@acme.io", "Jane Doe", "12 Real Street, Boston");
    cfg.apply(&KEY, "public.users", &mut r);
    let email = text(&r[1].1);
    assert_ne!(email, "jane.doe@acme.io");
    assert!(email.ends_with("@acme.io"), "domain kept: {email}");
    assert_eq!(email.len(), "jane.doe@acme.io".len(), "length kept: {email}");
    assert_eq!(text(&r[2].1).len(), "Jane Doe".len());
    assert_ne!(text(&r[2].1), "Jane Doe");
    assert_ne!(text(&r[3].1), "12 Real Street, Boston");
    assert_eq!(text(&r[0].1), "1", "unconfigured columns pass through here (strict mode refuses them at validation)");

    // Deterministic: the same input gives the same output, in any table or run.
    let mut again = row("jane.doe@acme.io", "x", "y");
    cfg.apply(&KEY, "public.users", &mut again);
    assert_eq!(again[1].1, r[1].1);
    let other_key = [8u8; 32];
    let mut keyed = row("jane.doe@acme.io", "x", "y");
    cfg.apply(&other_key, "public.users", &mut keyed);
    assert_ne!(keyed[1].1, r[1].1, "another key gives another mapping");
}

#[test]
fn strict_validation_lists_uncovered_columns_and_unique_columns_need_injective_transforms() {
    let cfg = TransformConfig::parse("transform.yaml", SEED).unwrap();
    let schema = BTreeMap::from([(
        "public.users".to_string(),
        vec!["id".to_string(), "email".into(), "full_name".into(), "address".into(), "phone".into()],
    )]);
    let err = cfg.validate(&schema, &BTreeSet::new(), true).unwrap_err().to_string();
    assert!(err.contains("public.users.id") && err.contains("public.users.phone"), "{err}");
    cfg.validate(&schema, &BTreeSet::new(), false).unwrap();
    let unique = BTreeSet::from([("public.users".to_string(), "full_name".to_string())]);
    let err = cfg.validate(&schema, &unique, false).unwrap_err().to_string();
    assert!(err.contains("unique index") && err.contains("transform.yaml:11:"), "{err}");
    // Length-preserving email masking is a keyed permutation: fine on a unique column.
    let unique_email = BTreeSet::from([("public.users".to_string(), "email".to_string())]);
    cfg.validate(&schema, &unique_email, false).unwrap();
    let missing_table = BTreeMap::from([("public.orders".to_string(), vec!["id".to_string()])]);
    assert!(cfg
        .validate(&missing_table, &BTreeSet::new(), false)
        .unwrap_err()
        .to_string()
        .contains("public.users is in the config but not replicated"));
}

#[test]
fn bad_configs_name_the_problem_and_the_line() {
    let unknown = SEED.replace("name: neosync_fullname", "name: scramble");
    let err = TransformConfig::parse("t.yaml", &unknown).unwrap_err().to_string();
    assert!(err.contains("t.yaml:11") && err.contains("unknown transformer 'scramble'"), "{err}");
    let bad_param = SEED.replace("preserve_length: true\n        address", "preserve_length: maybe\n        address");
    let err = TransformConfig::parse("t.yaml", &bad_param).unwrap_err().to_string();
    assert!(err.contains("t.yaml:11") && err.contains("preserve_length"), "{err}");
    let err = TransformConfig::parse("t.yaml", "transformations:\n  table_transformers: [\n").unwrap_err().to_string();
    assert!(err.contains("malformed YAML at line"), "{err}");
}

#[test]
fn every_transformer_does_what_it_says() {
    let key = KEY;
    let build = |yaml: &str| {
        let v: yaml_serde::Value = yaml_serde::from_str(yaml).unwrap();
        let name = v["name"].as_str().unwrap_or("null").to_string(); // YAML reads `null` as null
        Transformer::from_config(&name, &v["parameters"]).ok().unwrap()
    };
    let apply = |t: &Transformer, s: &str| t.apply(&key, "c", &Value::Text(s.into()), &BTreeMap::new());
    let phone = apply(&build("name: phone"), "+1 (555) 123-4567");
    assert_eq!(text(&phone).len(), "+1 (555) 123-4567".len());
    assert!(text(&phone).starts_with("+") && text(&phone).contains(") "));
    assert_eq!(apply(&build("name: literal\nparameters: {value: redacted}"), "x"), Value::Text("redacted".into()));
    assert_eq!(apply(&build("name: null"), "x"), Value::Null);
    assert_eq!(text(&apply(&build("name: hash\nparameters: {length: 16}"), "x")).len(), 16);
    let n: i64 = text(&apply(&build("name: int_noise\nparameters: {min: -5, max: 5}"), "100")).parse().unwrap();
    assert!((95..=105).contains(&n));
    let d = apply(&build("name: date_noise\nparameters: {days: 10}"), "2000-03-01");
    assert!(text(&d).starts_with("2000-02-") || text(&d).starts_with("2000-03-"), "{d:?}");
    let c = apply(&build("name: choice\nparameters: {values: [a, b]}"), "zzz");
    assert!(c == Value::Text("a".into()) || c == Value::Text("b".into()));
    assert_eq!(text(&apply(&build("name: uuid"), "x")).len(), 36);
    assert_eq!(
        apply(&build("name: regex_replace\nparameters: {pattern: '[0-9]', replacement: '#'}"), "a1b22"),
        Value::Text("a#b##".into())
    );
    let j = apply(&build("name: json\nparameters: {set: {ssn: hidden}, delete: [dob]}"), r#"{"ssn":"123","dob":"1990","k":1}"#);
    assert_eq!(j, Value::Text(r#"{"k":1,"ssn":"hidden"}"#.into()));
    assert_eq!(text(&apply(&build("name: string"), "secret")).len(), 6);
    assert_eq!(apply(&build("name: keep"), "kept"), Value::Text("kept".into()));
}

#[test]
fn error_lines_follow_each_entry_and_its_column_keys() {
    let yaml = "transformations:
  table_transformers:
    - table: users
      column_transformers:
        name:
          name: full_name
        email: {name: email}
    # a comment
    - table: events
      column_transformers:
        id:
          name: hash
          parameters: {length: 4}
";
    let err = TransformConfig::parse("t.yaml", yaml).unwrap_err().to_string();
    assert!(err.contains("t.yaml:11:") && err.contains("public.events.id"), "{err}");
    let bad_name = yaml.replace("name: full_name", "name: fullname_x");
    let err = TransformConfig::parse("t.yaml", &bad_name).unwrap_err().to_string();
    assert!(err.contains("t.yaml:5:") && err.contains("unknown transformer 'fullname_x'"), "{err}");
}

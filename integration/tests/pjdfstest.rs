//! Acceptance 3: pjdfstest on a branch. Every test that passes on ext4 here passes on
//! the branch, except those listed in `NOT_APPLICABLE` (also listed in the README).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use pgbranch_integration::*;

/// Tests that pass on ext4 but cannot apply to a FUSE filesystem, with the reason.
const NOT_APPLICABLE: &[(&str, &str)] =
    &[("link::link_count_max", "pathconf(_PC_LINK_MAX) has no value for FUSE filesystems, so pjdfstest skips it")];

const CONFIG: &str = r#"
[features]

[settings]
naptime = 0.02

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

/// Runs pjdfstest in `dir`; returns test name -> "ok" | "FAILED" | "skipped".
fn pjdfstest(dir: &Path, config: &Path) -> BTreeMap<String, String> {
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .current_dir(dir)
        .output()
        .expect("pjdfstest is installed (scripts/install-test-deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut results = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(result), None) = (words.next(), words.next(), words.next()) {
            if name.contains("::") && matches!(result, "ok" | "FAILED" | "skipped") {
                results.insert(name.to_string(), result.to_string());
            }
        }
    }
    assert!(results.len() > 300, "pjdfstest output not understood:\n{text}");
    results
}

#[test]
fn pjdfstest_on_a_branch_matches_ext4() {
    let scratch = std::env::temp_dir().join(format!("pgbranch-pjdfstest-{}", std::process::id()));
    let ext4 = scratch.join("ext4");
    std::fs::create_dir_all(&ext4).unwrap();
    let config = scratch.join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let store = TestStore::new("pjdfstest");
    store.ok(&["branch", "create", "posix", "--empty"]);
    let branch = store.path("posix");
    // pjdfstest runs as root and as other users inside the directory: give it the
    // ownership and mode its ext4 directory has (a branch root is 0700 for postgres).
    std::os::unix::fs::chown(&branch, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&branch, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let on_ext4 = pjdfstest(&ext4, &config);
    let on_branch = pjdfstest(&branch, &config);
    std::fs::remove_dir_all(&scratch).ok();

    let mut regressions = Vec::new();
    for (name, result) in &on_ext4 {
        let exempt = NOT_APPLICABLE.iter().any(|(n, _)| n == name);
        if result == "ok" && on_branch.get(name).map(String::as_str) != Some("ok") && !exempt {
            regressions.push(format!("{name}: {} on the branch", on_branch.get(name).map_or("missing", |s| s)));
        }
    }
    let passed = on_branch.values().filter(|r| *r == "ok").count();
    let failed = on_branch.values().filter(|r| *r == "FAILED").count();
    println!("pjdfstest on a branch: {passed} passed, {failed} failed, {} total", on_branch.len());
    assert!(regressions.is_empty(), "tests passing on ext4 but not on a branch:\n{}", regressions.join("\n"));
    assert_eq!(failed, 0, "pjdfstest failures on the branch");
}

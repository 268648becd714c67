//! History below FUSE: each commit of a branch with a retention window is a retained
//! point; a branch made `--at` a time holds the newest point not after it, also after
//! GC; a time before the history is a clear error naming the window; without a window
//! no point is kept; delete and reset take a branch's history with them.

mod common;

use common::{contents, create_file, pattern, write};
use pgbranch_fs::repo::{RepoError, Repository};

fn file_of(repo: &Repository, branch: &str) -> Vec<u8> {
    let b = repo.get(branch).unwrap();
    let ino = b.tree().lookup(pgbranch_fs::node::ROOT_INO, b"f").unwrap();
    b.with_tree_mut(|t| contents(t, ino))
}

#[test]
fn a_branch_at_a_time_holds_the_newest_point_not_after_it_also_after_gc() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.set_default_retention(3600);
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    let mut times = Vec::new();
    for v in 1..=3u64 {
        write(&repo, "a", ino, 0, &pattern(v, 40_000));
        repo.commit_branch(&repo.get("a").unwrap()).unwrap();
        times.push(pgbranch_fs::history::now_unix_micros());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let points = repo.history("a").unwrap();
    assert_eq!(points.len(), 3, "{points:?}");
    assert_eq!(repo.newest_point("a").unwrap().map(|p| p.at_unix_micros), Some(points[2].at_unix_micros));
    assert!(points.iter().all(|p| p.changed_bytes == 5 * 8192), "{points:?}");
    // Everything but the retained points becomes garbage; GC keeps the points.
    write(&repo, "a", ino, 0, &pattern(9, 40_000));
    repo.gc().unwrap();
    for (v, at) in times.iter().enumerate() {
        let name = format!("at{v}");
        let (_, point) = repo.create_at(&name, "a", *at).unwrap();
        assert!(point.at_unix_micros <= *at);
        assert!(file_of(&repo, &name) == pattern(v as u64 + 1, 40_000), "branch at point {v} holds version {}", v + 1);
    }
    assert!(repo.verify().unwrap().damaged.is_empty());
    let Err(err) = repo.create_at("early", "a", points[0].at_unix_micros - 1) else { panic!("a time before the history") };
    assert!(matches!(err, RepoError::OutsideHistory(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no retained point at or before") && msg.contains("its history covers"), "{msg}");
    assert!(repo.get("early").is_err(), "the refused create made nothing");

    // Reopened, the history is there.
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(repo.history("a").unwrap().len(), 4, "three points and the commit gc made");
}

#[test]
fn without_a_window_no_point_is_kept_and_delete_or_reset_takes_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    write(&repo, "a", ino, 0, &pattern(1, 9000));
    repo.commit_all().unwrap();
    assert!(repo.history("a").unwrap().is_empty(), "no window, no history");
    assert!(repo.newest_point("a").unwrap().is_none());
    let Err(err) = repo.create_at("x", "a", u64::MAX) else { panic!("a branch without history") };
    let err = err.to_string();
    assert!(err.contains("keeps no history") && err.contains("--history"), "{err}");

    repo.set_retention("a", Some(600)).unwrap();
    assert_eq!(repo.retention("a").unwrap(), (600, true));
    write(&repo, "a", ino, 0, &pattern(2, 9000));
    repo.commit_all().unwrap();
    assert_eq!(repo.history("a").unwrap().len(), 1);

    // A child reset drops its own history but keeps its window.
    repo.create_from("c", "a", pgbranch_fs::catalog::Kind::Branch).unwrap();
    let cino = repo.get("c").unwrap().tree().lookup(pgbranch_fs::node::ROOT_INO, b"f").unwrap();
    repo.set_retention("c", Some(60)).unwrap();
    write(&repo, "c", cino, 0, &pattern(3, 9000));
    repo.commit_all().unwrap();
    assert_eq!(repo.history("c").unwrap().len(), 1);
    repo.reset("c").unwrap();
    assert!(repo.history("c").unwrap().is_empty());
    assert_eq!(repo.retention("c").unwrap(), (60, true));

    // Deleted with its history: GC then frees what only the points held.
    repo.delete("a").unwrap();
    repo.delete("c").unwrap();
    let gc = repo.gc().unwrap();
    assert!(gc.objects_removed >= 4, "gc freed what the deleted branches and their points held: {gc:?}");
}

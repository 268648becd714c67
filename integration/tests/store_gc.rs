//! Acceptance 7: after deleting branches, `pgbranch gc` brings the store's physical
//! size to within 10 % of what the remaining branches need, and leaves their data
//! intact.

use pgbranch_integration::*;

const MIB: usize = 1 << 20;

#[test]
fn gc_reclaims_deleted_branches() {
    let store = TestStore::new("gc");
    store.ok(&["branch", "create", "base", "--empty"]);
    let base = noise(48 * MIB, 1);
    write_synced(&store.path("base").join("base.bin"), &base);

    let mut own = Vec::new();
    for i in 0..4u64 {
        let name = format!("b{i}");
        store.ok(&["branch", "create", &name, "--from", "base"]);
        let data = noise(32 * MIB, 100 + i);
        write_synced(&store.path(&name).join("own.bin"), &data);
        // Overwrite part of the shared file too: those blocks become unique to the branch.
        let f = std::fs::OpenOptions::new().write(true).open(store.path(&name).join("base.bin")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &noise(4 * MIB, 200 + i), 0).unwrap();
        f.sync_all().unwrap();
        own.push(data);
    }

    // With every branch alive only superseded tree nodes are garbage: no block goes.
    let blocks_before = store.json(&["du"])["stored_block_bytes"].as_u64().unwrap();
    store.ok(&["gc"]);
    assert_eq!(store.json(&["du"])["stored_block_bytes"].as_u64().unwrap(), blocks_before);
    store.ok(&["verify"]);

    for name in ["b0", "b1", "b2"] {
        store.ok(&["branch", "delete", name]);
    }
    let stats = store.json(&["gc"]);
    let du = store.json(&["du"]);
    let need = du["stored_block_bytes"].as_u64().unwrap();
    let after = du["physical_bytes"].as_u64().unwrap();
    println!("gc: {stats}\nremaining branches need {need} bytes; store is {after} bytes");
    assert!(after as f64 <= need as f64 * 1.10, "store {after} B > 1.10 x {need} B needed after gc ({stats})");

    assert_eq!(std::fs::read(store.path("base").join("base.bin")).unwrap(), base, "base intact after gc");
    assert_eq!(std::fs::read(store.path("b3").join("own.bin")).unwrap(), own[3], "b3 intact after gc");
    store.ok(&["verify"]);
}

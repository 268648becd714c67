//! Acceptance 6: a flipped byte in a stored block makes reads of that block fail with
//! EIO, never other bytes; `pgbranch verify` names the branch, file and offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use pgbranch_integration::*;

const BLOCK: usize = 8192;
const BLOCKS: usize = 64;
const DAMAGED: usize = 37;

/// Flips one byte of the stored copy of `block` in the store's packs.
fn flip_stored_byte(store_dir: &Path, block: &[u8]) {
    let packs = store_dir.join("data/packs");
    for entry in std::fs::read_dir(&packs).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(pos) = bytes.windows(block.len()).position(|w| w == block) {
            bytes[pos + 1000] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("block not found verbatim in any pack under {}", packs.display());
}

#[test]
fn flipped_byte_is_eio_and_verify_names_it() {
    let store = TestStore::new("damage");
    store.ok(&["branch", "create", "d", "--empty"]);
    let data = noise(BLOCK * BLOCKS, 0x9e3779b97f4a7c15);
    let file = store.path("d").join("data.bin");
    std::fs::write(&file, &data).unwrap();
    File::open(&file).unwrap().sync_all().unwrap();
    store.ok(&["verify"]);
    store.ok(&["stop"]); // commits: every block is now in a pack

    flip_stored_byte(&store.dir, &data[DAMAGED * BLOCK..(DAMAGED + 1) * BLOCK]);

    let file = store.path("d").join("data.bin"); // restarts the daemon, cold caches
    let f = File::open(&file).unwrap();
    let mut buf = vec![0u8; BLOCK];
    let err = f.read_exact_at(&mut buf, (DAMAGED * BLOCK) as u64).expect_err("reading a damaged block must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "damaged block: {err}");
    for i in [0, DAMAGED - 1, DAMAGED + 1, BLOCKS - 1] {
        f.read_exact_at(&mut buf, (i * BLOCK) as u64).unwrap();
        assert_eq!(buf, data[i * BLOCK..(i + 1) * BLOCK], "block {i} must read back intact");
    }
    let whole = std::fs::read(&file);
    assert_eq!(whole.expect_err("a whole-file read crosses the damage").raw_os_error(), Some(libc::EIO));

    let out = store.run(&["verify"]);
    assert!(!out.status.success(), "verify must exit non-zero on damage");
    let text = String::from_utf8_lossy(&out.stdout);
    let offset = (DAMAGED * BLOCK).to_string();
    assert!(text.contains("branch d") && text.contains("/data.bin") && text.contains(&offset), "verify output: {text}");

    let out = store.command().args(["verify", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["branch"], "d");
    assert_eq!(damaged[0]["path"], "/data.bin");
    assert_eq!(damaged[0]["offset"], DAMAGED * BLOCK);
}

//! I/O errors under the store: the store on an ext4 on a loop device on the fault
//! layer ([`faultdisk`]), whose switches make the block device fail reads, writes or
//! flushes with EIO.

use std::io::Write;
use std::time::Duration;

use pgbranch_integration::faultdisk::{make_base_image, FaultDisk, Faults};

fn root(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("pgbranch-loop-{}-0-{tag}", std::process::id()));
    pgbranch_integration::detach_mounts_under(&root);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The layer under the loop device sees its writes and flushes, and a failed flush
/// reaches the fsync of a file on the ext4 above it: the ground the other tests stand on.
#[test]
fn the_loop_device_writes_and_flushes_through_the_fault_layer() {
    let root = root("layer");
    let base = root.join("base.img");
    make_base_image(&base, 64);
    let mut disk = FaultDisk::start(&root.join("d"), &base);
    let before = disk.journal().counts;
    let file = disk.mountpoint().join("f");
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(&vec![7u8; 1 << 20]).unwrap();
    f.sync_all().unwrap();
    let after = disk.journal().counts;
    println!("layer: {before:?} -> {after:?}");
    assert!(after.writes > before.writes, "the loop device's writes reach the layer");
    assert!(after.fsyncs > before.fsyncs, "an fsync on the ext4 flushes the loop device into the layer");
    assert!(disk.journal().unsynced.is_empty(), "nothing unsynced after an fsync");
    disk.set_faults(Faults { fsyncs: true, ..Faults::default() });
    f.write_all(&vec![8u8; 1 << 20]).unwrap();
    let r = f.sync_all();
    println!("fsync with failing flushes: {r:?}");
    assert!(r.is_err(), "a failed flush of the device fails the fsync above it");
    disk.set_faults(Faults::default());
    drop(f);
    std::thread::sleep(Duration::from_millis(10));
    disk.detach();
    let _ = std::fs::remove_dir_all(&root);
}

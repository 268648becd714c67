//! Golden bytes: a fixed value of every persisted type and of every variant of every
//! persisted enum, encoded and compared with hex committed here. A reordered variant
//! or field, a changed tag or a changed header fails this test: such a change needs a
//! new format version (and a reader for the old one), not a new golden string.

use std::collections::BTreeMap;

use super::{catalog, log, node, pack, store_file};
use crate::block::{self, Hash};
use crate::catalog::{BranchRecord, Kind};
use crate::node::{Attr, InodeLeaf, InodeRecord, MapLeaf, MapRoot, StoredContent, Time, TreeRoot};
use crate::op::{NewKind, Op, SetAttr};

const T: Time = Time { secs: 1_700_000_000, nanos: 7 };

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn h(n: u8) -> Hash {
    Hash([n; 32])
}

fn ops() -> Vec<(&'static str, Op)> {
    let create = |kind| Op::Create { parent: 1, name: b"f".to_vec(), ino: 2, kind, mode: 0o100644, uid: 3, gid: 4, rdev: 0, now: T };
    vec![
        ("write", Op::Write { ino: 2, offset: 8192, data: vec![0xaa, 0xbb], now: T }),
        ("create_file", create(NewKind::File)),
        ("create_dir", create(NewKind::Dir)),
        ("create_symlink", create(NewKind::Symlink(b"t".to_vec()))),
        ("create_special", create(NewKind::Special)),
        ("link", Op::Link { ino: 2, parent: 1, name: b"g".to_vec(), now: T }),
        ("unlink", Op::Unlink { parent: 1, name: b"g".to_vec(), dir: true, now: T }),
        ("rename", Op::Rename { parent: 1, name: b"a".to_vec(), new_parent: 5, new_name: b"b".to_vec(), flags: 1, now: T }),
        (
            "set_attr",
            Op::SetAttr {
                ino: 2,
                attr: SetAttr { mode: Some(0o600), uid: None, gid: Some(9), size: Some(300), atime: None, mtime: Some(T), ctime: None },
                now: T,
            },
        ),
        ("fallocate", Op::Fallocate { ino: 2, offset: 0, len: 16384, mode: -1, now: T }),
        ("set_xattr", Op::SetXattr { ino: 2, name: b"user.a".to_vec(), value: b"v".to_vec(), flags: 2, now: T }),
        ("remove_xattr", Op::RemoveXattr { ino: 2, name: b"user.a".to_vec(), now: T }),
        ("write_blocks", Op::WriteBlocks { ino: 2, offset: 8190, head: vec![1, 2], blocks: vec![Some(h(3)), None], tail: vec![4], now: T }),
    ]
}

const OPS: &[(&str, &str)] = &[
    ("write", "010200000000000000002000000000000000f153650000000007000000aabb"),
    ("create_file", "020101660200a4830203040080c49fd50c07"),
    ("create_dir", "020101660201a4830203040080c49fd50c07"),
    ("create_symlink", "0201016602020174a4830203040080c49fd50c07"),
    ("create_special", "020101660203a4830203040080c49fd50c07"),
    ("link", "030201016780c49fd50c07"),
    ("unlink", "040101670180c49fd50c07"),
    ("rename", "050101610501620180c49fd50c07"),
    ("set_attr", "060201800300010901ac02000180c49fd50c070080c49fd50c07"),
    ("fallocate", "0702008080010180c49fd50c07"),
    ("set_xattr", "080206757365722e6101760480c49fd50c07"),
    ("remove_xattr", "090206757365722e6180c49fd50c07"),
    ("write_blocks", "0a02fe3f0201020201030303030303030303030303030303030303030303030303030303030303030300010480c49fd50c07"),
];

fn attr(mode: u32) -> Attr {
    Attr { mode, uid: 1, gid: 2, nlink: 1, rdev: 0, atime: T, mtime: T, ctime: T }
}

fn nodes() -> Vec<(&'static str, Vec<u8>)> {
    let record = |mode, content| InodeRecord { attr: attr(mode), content, xattrs: BTreeMap::new() };
    let leaf = InodeLeaf {
        inodes: vec![
            (1, record(0o40755, StoredContent::Dir { parent: 1, entries: BTreeMap::from([(b"f".to_vec(), 2)]) })),
            (2, record(0o100644, StoredContent::File { size: 9000, map: Some(h(1)) })),
            (3, record(0o100644, StoredContent::File { size: 0, map: None })),
            (4, record(0o120777, StoredContent::Symlink { target: b"f".to_vec() })),
            (
                5,
                InodeRecord {
                    attr: attr(0o10644),
                    content: StoredContent::Special,
                    xattrs: BTreeMap::from([(b"user.k".to_vec(), b"v".to_vec())]),
                },
            ),
        ],
    };
    let enc = |r: Result<Vec<u8>, _>| r.unwrap();
    vec![
        ("tree_root", enc(node::encode_node(&TreeRoot { format: node::TREE_FORMAT, next_ino: 6, leaves: vec![(0, h(2))] }))),
        ("inode_leaf", enc(node::encode_node(&leaf))),
        ("map_root", enc(node::encode_node(&MapRoot { leaves: vec![None, Some(h(3))] }))),
        ("map_leaf", enc(node::encode_node(&MapLeaf { blocks: vec![(0, h(4)), (511, h(5))] }))),
    ]
}

const NODES: &[(&str, &str)] = &[
    ("tree_root", "0101010601000202020202020202020202020202020202020202020202020202020202020202"),
    ("inode_leaf", "02010501ed83010102010080c49fd50c0780c49fd50c0780c49fd50c070101010166020002a483020102010080c49fd50c0780c49fd50c0780c49fd50c0700a8460101010101010101010101010101010101010101010101010101010101010101010003a483020102010080c49fd50c0780c49fd50c0780c49fd50c070000000004ffc3020102010080c49fd50c0780c49fd50c0780c49fd50c070201660005a4230102010080c49fd50c0780c49fd50c0780c49fd50c07030106757365722e6b0176"),
    ("map_root", "03010200010303030303030303030303030303030303030303030303030303030303030303"),
    ("map_leaf", "040102000404040404040404040404040404040404040404040404040404040404040404ff030505050505050505050505050505050505050505050505050505050505050505"),
];

fn records() -> Vec<(&'static str, Vec<u8>)> {
    let rec = |kind, parent: Option<&str>| BranchRecord {
        name: "main".into(),
        id: 3,
        kind,
        root: h(6),
        log_seq: 12,
        parent: parent.map(str::to_string),
        created_unix: 1_700_000_000,
    };
    vec![
        ("catalog_branch", catalog::encode_record(&rec(Kind::Branch, None)).unwrap()),
        ("catalog_snapshot", catalog::encode_record(&rec(Kind::Snapshot, Some("main"))).unwrap()),
        ("pack_header", pack::pack_header()),
        ("pack_record_header", pack::record_header(&h(7), 300).to_vec()),
        ("segment_header", log::segment_header(5)),
        ("log_record", log::encode_record(5, 24, &Op::Write { ino: 2, offset: 0, data: vec![1], now: T }).unwrap()),
        ("codec_raw", block::encode(b"ab")),
    ]
}

const RECORDS: &[(&str, &str)] = &[
    ("catalog_branch", "01046d61696e030006060606060606060606060606060606060606060606060606060606060606060c0080c49fd50c"),
    ("catalog_snapshot", "01046d61696e030106060606060606060606060606060606060606060606060606060606060606060c01046d61696e80c49fd50c"),
    ("pack_header", "504742525041434b0100000096d53fd7"),
    ("pack_record_header", "07070707070707070707070707070707070707070707070707070707070707072c010000"),
    ("segment_header", "504742524c4f470002000000050000000000000068d02f6b"),
    ("log_record", "1e0000002299c06c1800000000000000010200000000000000000000000000000000f15365000000000700000001"),
    ("codec_raw", "006162"),
];

fn check(actual: Vec<(&'static str, Vec<u8>)>, golden: &[(&str, &str)]) {
    let actual: Vec<(&str, String)> = actual.into_iter().map(|(n, b)| (n, hex(&b))).collect();
    let want: Vec<(&str, String)> = golden.iter().map(|(n, h)| (*n, h.to_string())).collect();
    if actual != want {
        let listing: String = actual.iter().map(|(n, h)| format!("    (\"{n}\", \"{h}\"),\n")).collect();
        panic!("encoding differs from the golden bytes; the encoder now gives:\n{listing}");
    }
}

#[test]
fn op_encodings_are_golden() {
    let actual = ops()
        .into_iter()
        .map(|(n, op)| {
            let mut body = Vec::new();
            log::encode_op(&op, &mut body).unwrap();
            (n, body)
        })
        .collect();
    check(actual, OPS);
}

#[test]
fn node_encodings_are_golden() {
    check(nodes(), NODES);
}

#[test]
fn record_and_header_encodings_are_golden() {
    check(records(), RECORDS);
}

#[test]
fn store_format_file_is_golden() {
    let dir = tempfile::tempdir().unwrap();
    store_file::write_format_file(dir.path(), store_file::STORE_FORMAT_VERSION).unwrap();
    let bytes = std::fs::read(dir.path().join(store_file::FORMAT_FILE)).unwrap();
    assert_eq!(hex(&bytes), "50474252414e434802000000f44173c4");
    // A store of format 1 (before the index's indexed-up-to row) is still read.
    store_file::write_format_file(dir.path(), 1).unwrap();
    assert_eq!(hex(&std::fs::read(dir.path().join(store_file::FORMAT_FILE)).unwrap()), "50474252414e4348010000001aeec6d6");
    assert_eq!(store_file::check_or_create(dir.path()).unwrap(), 1);
}

#[test]
fn every_encoding_decodes_back() {
    for (name, op) in ops() {
        let mut body = Vec::new();
        log::encode_op(&op, &mut body).unwrap();
        let back = log::decode_op(&body).unwrap();
        let mut again = Vec::new();
        log::encode_op(&back, &mut again).unwrap();
        assert_eq!(body, again, "{name}");
    }
    for (name, bytes) in nodes() {
        let again = match name {
            "tree_root" => node::encode_node(&node::decode_node::<TreeRoot>(&bytes).unwrap()),
            "inode_leaf" => node::encode_node(&node::decode_node::<InodeLeaf>(&bytes).unwrap()),
            "map_root" => node::encode_node(&node::decode_node::<MapRoot>(&bytes).unwrap()),
            _ => node::encode_node(&node::decode_node::<MapLeaf>(&bytes).unwrap()),
        };
        assert_eq!(bytes, again.unwrap(), "{name}");
    }
    for (name, bytes) in records().into_iter().filter(|(n, _)| n.starts_with("catalog")) {
        let back = catalog::decode_record(&bytes).unwrap();
        assert_eq!(catalog::encode_record(&back).unwrap(), bytes, "{name}");
    }
}

#[test]
fn nodes_of_the_wrong_kind_or_version_are_refused() {
    let bytes = node::encode_node(&MapLeaf { blocks: vec![(1, h(1))] }).unwrap();
    let err = node::decode_node::<InodeLeaf>(&bytes).unwrap_err().to_string();
    assert!(err.contains("found node tag 4 (block map leaf)"), "{err}");
    let mut newer = bytes.clone();
    newer[1] = 2;
    let err = node::decode_node::<MapLeaf>(&newer).unwrap_err().to_string();
    assert!(err.contains("block map leaf format version 2; this pgbranch reads up to 1"), "{err}");
    let root = node::encode_node(&TreeRoot { format: node::TREE_FORMAT + 1, next_ino: 2, leaves: vec![] }).unwrap();
    let err = node::decode_node::<TreeRoot>(&root).unwrap_err().to_string();
    assert!(err.contains("tree format version 2; this pgbranch reads up to 1"), "{err}");
    let mut trailing = bytes;
    trailing.push(0);
    assert!(node::decode_node::<MapLeaf>(&trailing).is_err());
}

#[test]
fn unknown_tags_are_errors() {
    assert!(log::decode_op(&[0x7f, 0, 0]).unwrap_err().to_string().contains("unknown op tag 127"));
    let mut body = Vec::new();
    log::encode_op(&ops()[1].1, &mut body).unwrap();
    // The NewKind tag follows parent (1), name (len 1, 'f') and ino (2).
    assert_eq!(body[5], crate::format::tags::NEW_FILE);
    body[5] = 9;
    let err = log::decode_op(&body).unwrap_err().to_string();
    assert!(err.contains("create op is malformed: unknown new inode kind tag 9"), "{err}");
}

use super::*;

#[test]
fn lsn_text_round_trip() {
    let lsn: Lsn = "0/16B3748".parse().unwrap();
    assert_eq!(lsn, Lsn(0x16B3748));
    assert_eq!(lsn.to_string(), "0/16B3748");
    assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
    assert_eq!("a/b".parse::<Lsn>().unwrap(), Lsn(0xA_0000_000B));
    for bad in ["", "0", "0/", "/1", "x/1", "1/2/3", "123456789/0", "-1/0"] {
        let e = bad.parse::<Lsn>().unwrap_err();
        assert!(e.to_string().contains("like 0/16B3748"), "{e}");
    }
}

/// A conn in streaming state fed by the test through the other end of a socket pair.
fn streaming_pair() -> (ReplicationConn, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut conn = ReplicationConn::new(Box::new(a), "test".into());
    conn.state = State::Streaming;
    (conn, b)
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn recv_keeps_partial_messages_across_timeouts() {
    let (mut conn, mut server) = streaming_pair();
    let mut xlog = vec![b'w'];
    for v in [0x10u64, 0x20, 0] {
        xlog.extend_from_slice(&v.to_be_bytes());
    }
    xlog.extend((0..100_000u32).map(|i| i as u8));
    let mut bytes = frame(b'd', &xlog);
    bytes.extend(frame(b'N', b"SNOTICE\0Mhello\0\0"));
    bytes.extend(frame(b'd', &[b'k', 0, 0, 0, 0, 0, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    bytes.extend(frame(b'E', b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0Dsome detail\0\0"));
    for piece in [&bytes[..3], &bytes[3..50_000], &bytes[50_000..]] {
        assert!(conn.recv(Duration::from_millis(20)).unwrap().is_none());
        server.write_all(piece).unwrap();
    }
    let Some(StreamMsg::XLogData { wal_start, wal_end, data }) = conn.recv(Duration::from_millis(20)).unwrap() else { panic!() };
    assert_eq!((wal_start, wal_end, data), (Lsn(0x10), Lsn(0x20), xlog[25..].to_vec()));
    let ka = conn.recv(Duration::from_millis(20)).unwrap();
    assert_eq!(ka, Some(StreamMsg::Keepalive { wal_end: Lsn(0x30), reply_requested: true }));
    let e = conn.recv(Duration::from_millis(20)).unwrap_err();
    assert_eq!(
        (e.code(), e.to_string().as_str()),
        (Some("57P01"), "server error 57P01: FATAL: terminating connection (detail: some detail)")
    );
    assert!(matches!(conn.recv(Duration::from_millis(1)), Err(WireError::Protocol(_))));

    let (mut conn, mut server) = streaming_pair();
    server.write_all(&frame(b'd', b"k")[..4]).unwrap();
    drop(server);
    let e = conn.recv(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(&e, WireError::StreamEnded(m) if m.contains("middle of a message")), "{e:?}");
}

use super::*;
use crate::limits::{MAX_FRAME_LEN, MAX_LIST_ITEMS, MAX_NAME_BYTES, MAX_PUBLIC_IDENTITY_BYTES};
use proptest::prelude::*;

fn samples() -> Vec<Frame<'static>> {
    let ct: &'static [u8] = b"opaque ciphertext";
    vec![
        Frame::Hello(Hello {
            software: "hermes/0.1.0",
            dh_group: 1,
            relay_key: [7; 32],
            challenge: [9; 32],
            signature: [3; 64],
        }),
        Frame::Authenticated {
            name: "alice",
            acked: 42,
        },
        Frame::Identities(vec![
            IdentityEntry {
                name: "alice",
                identity: Some(b"id-bytes"),
            },
            IdentityEntry {
                name: "bob",
                identity: None,
            },
        ]),
        Frame::CommitAccepted {
            group_id: [1; 16],
            epoch: 3,
        },
        Frame::Commits {
            group_id: [1; 16],
            more: true,
            commits: vec![b"c1", b"c22"],
        },
        Frame::Groups(vec![GroupSummary {
            group_id: [2; 16],
            epoch: 9,
            admin: "zoë",
        }]),
        Frame::Members {
            group_id: [2; 16],
            epoch: 9,
            admin: "alice",
            members: vec!["alice", "bob"],
        },
        Frame::Deliver(Deliver {
            seq: 77,
            sender: "bob",
            group_id: [4; 16],
            kind: EntryKind::GroupMessage,
            message_id: [5; 16],
            unix_ms: 1_700_000_000_000,
            ciphertext: ct,
        }),
        Frame::StoredReceipt {
            message_id: [5; 16],
            seq: 12,
            unix_ms: 99,
        },
        Frame::GapNotice(GapNotice {
            seq: 8,
            group_id: [4; 16],
            sender: "carol",
            count: 17,
        }),
        Frame::Pong { nonce: 5 },
        Frame::error(ErrorCode::StaleEpoch, FrameKind::GroupSend as u8, [5; 16]),
        Frame::Register {
            name: "alice",
            identity: b"identity",
            proof: [8; 64],
        },
        Frame::Login {
            name: "alice",
            signature: [6; 64],
        },
        Frame::FetchIdentities(vec!["alice", "bob"]),
        Frame::CreateGroup { genesis: b"gen" },
        Frame::Commit { commit: b"commit" },
        Frame::FetchCommits {
            group_id: [1; 16],
            from_epoch: 2,
        },
        Frame::ListGroups,
        Frame::ListMembers { group_id: [1; 16] },
        Frame::GroupSend {
            group_id: [1; 16],
            epoch: 4,
            message_id: [2; 16],
            ciphertext: ct,
        },
        Frame::DirectSend {
            recipient: "bob",
            group_id: [1; 16],
            kind: EntryKind::KeyRequest,
            message_id: [2; 16],
            ciphertext: ct,
        },
        Frame::Ack { up_to: 1234 },
        Frame::Ping { nonce: 6 },
    ]
}

#[test]
fn every_kind_round_trips() {
    let frames = samples();
    assert_eq!(frames.len(), 24, "one sample per frame kind");
    for f in frames {
        let bytes = f.to_vec();
        let (frame, used) = split_frame(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        let back = Frame::decode(frame).unwrap();
        assert_eq!(back, f);
        assert_eq!(FrameKind::from_u8(f.kind() as u8), Some(f.kind()));
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for f in samples() {
        let bytes = f.to_vec();
        let frame = &bytes[LENGTH_PREFIX_LEN..];
        for cut in 0..frame.len() {
            assert!(
                Frame::decode(&frame[..cut]).is_err(),
                "{:?} cut at {cut}",
                f.kind()
            );
        }
    }
}

#[test]
fn leftover_bytes_are_an_error() {
    let mut bytes = Frame::Ack { up_to: 1 }.to_vec();
    bytes.push(0);
    assert_eq!(
        Frame::decode(&bytes[LENGTH_PREFIX_LEN..]),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

#[test]
fn versions_and_kinds_are_distinct_errors() {
    assert_eq!(Frame::decode(&[0, 0x2a]), Err(DecodeError::OldVersion(0)));
    assert_eq!(
        Frame::decode(&[2, 0x2a]),
        Err(DecodeError::UnknownVersion(2))
    );
    assert_eq!(
        Frame::decode(&[1, 0x7f]),
        Err(DecodeError::UnknownKind(0x7f))
    );
    assert_eq!(DecodeError::OldVersion(0).code(), ErrorCode::OldVersion);
    assert_eq!(
        DecodeError::UnknownVersion(2).code(),
        ErrorCode::UnknownVersion
    );
    assert_eq!(
        DecodeError::UnknownKind(0x7f).code(),
        ErrorCode::UnknownKind
    );
}

#[test]
fn max_frame_len_limit() {
    let mut buf = u32::try_from(MAX_FRAME_LEN).unwrap().to_be_bytes().to_vec();
    // Exactly the maximum is accepted (just incomplete here).
    assert_eq!(split_frame(&buf, MAX_FRAME_LEN), Ok(None));
    buf = u32::try_from(MAX_FRAME_LEN + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    assert_eq!(
        split_frame(&buf, MAX_FRAME_LEN),
        Err(DecodeError::FrameTooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    assert_eq!(
        split_frame(&[0, 0, 0, 1, 1], MAX_FRAME_LEN),
        Err(DecodeError::FrameTooShort { len: 1 })
    );
    assert_eq!(split_frame(&[0, 0], MAX_FRAME_LEN), Ok(None));
}

#[test]
fn max_name_bytes_on_the_wire() {
    let long = "a".repeat(MAX_NAME_BYTES + 1);
    let mut body = vec![PROTOCOL_VERSION, FrameKind::Login as u8];
    body.push(u8::try_from(long.len()).unwrap());
    body.extend_from_slice(long.as_bytes());
    body.extend_from_slice(&[0; 64]);
    assert_eq!(
        Frame::decode(&body),
        Err(DecodeError::NameTooLong {
            len: MAX_NAME_BYTES + 1
        })
    );
}

#[test]
fn max_identity_bytes_on_the_wire() {
    let big = vec![0u8; MAX_PUBLIC_IDENTITY_BYTES + 1];
    let bytes = Frame::Register {
        name: "a",
        identity: &big,
        proof: [0; 64],
    }
    .to_vec();
    assert!(matches!(
        Frame::decode(&bytes[LENGTH_PREFIX_LEN..]),
        Err(DecodeError::InvalidValue {
            field: "identity length",
            ..
        })
    ));
}

#[test]
fn max_list_items_on_the_wire() {
    let mut body = vec![PROTOCOL_VERSION, FrameKind::FetchIdentities as u8];
    body.extend_from_slice(&u16::try_from(MAX_LIST_ITEMS + 1).unwrap().to_be_bytes());
    assert_eq!(
        Frame::decode(&body),
        Err(DecodeError::TooManyItems {
            field: "names",
            count: MAX_LIST_ITEMS + 1
        })
    );
}

#[test]
fn bad_utf8_and_bad_flags_are_typed() {
    let body = [PROTOCOL_VERSION, FrameKind::Login as u8, 1, 0xff];
    assert_eq!(
        Frame::decode(&body),
        Err(DecodeError::BadUtf8 { field: "name" })
    );
    let mut c = Frame::Commits {
        group_id: [0; 16],
        more: false,
        commits: vec![],
    }
    .to_vec();
    c[LENGTH_PREFIX_LEN + 2 + 16] = 2;
    assert!(matches!(
        Frame::decode(&c[LENGTH_PREFIX_LEN..]),
        Err(DecodeError::InvalidValue { field: "more", .. })
    ));
}

#[test]
fn direct_send_refuses_group_and_commit_kinds() {
    let mut bytes = Frame::DirectSend {
        recipient: "b",
        group_id: [0; 16],
        kind: EntryKind::Distribution,
        message_id: [0; 16],
        ciphertext: b"",
    }
    .to_vec();
    bytes[LENGTH_PREFIX_LEN + 2 + 2 + 16] = EntryKind::GroupMessage as u8;
    assert!(matches!(
        Frame::decode(&bytes[LENGTH_PREFIX_LEN..]),
        Err(DecodeError::InvalidValue {
            field: "direct kind",
            ..
        })
    ));
}

#[test]
fn deliver_header_plus_stored_body_equals_full_encoding() {
    let full = Frame::Deliver(Deliver {
        seq: 0x0102_0304_0506_0708,
        sender: "bob",
        group_id: [4; 16],
        kind: EntryKind::Commit,
        message_id: commit_message_id(3),
        unix_ms: 5,
        ciphertext: b"xyz",
    })
    .to_vec();
    let mut body = Vec::new();
    put_entry_body(
        &mut body,
        "bob",
        &[4; 16],
        EntryKind::Commit,
        &commit_message_id(3),
        5,
        b"xyz",
    );
    let mut fast = Vec::new();
    encode_deliver_header(&mut fast, 0x0102_0304_0506_0708, body.len());
    assert_eq!(fast.len(), DELIVER_HEADER_LEN);
    fast.extend_from_slice(&body);
    assert_eq!(fast, full);
}

#[test]
fn split_frame_handles_partial_and_concatenated_input() {
    let mut stream = Frame::Ping { nonce: 1 }.to_vec();
    stream.extend(Frame::Ack { up_to: 2 }.to_vec());
    let (f1, n1) = split_frame(&stream, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(Frame::decode(f1).unwrap(), Frame::Ping { nonce: 1 });
    let (f2, n2) = split_frame(&stream[n1..], MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(Frame::decode(f2).unwrap(), Frame::Ack { up_to: 2 });
    assert_eq!(n1 + n2, stream.len());
    assert_eq!(split_frame(&stream[..n1 - 1], MAX_FRAME_LEN), Ok(None));
}

#[test]
fn auth_messages_are_labelled_and_distinct() {
    let l = login_message(&[1; 32], &[2; 32], "alice");
    let r = register_message(&[1; 32], &[2; 32], "alice");
    assert!(l.starts_with(LOGIN_LABEL));
    assert!(r.starts_with(REGISTER_LABEL));
    assert_ne!(l, r);
    assert_eq!(l.len(), LOGIN_LABEL.len() + 32 + 32 + 1 + 5);
}

/// The worked examples in PROTOCOL.md, Part 3: the hex encoding of each
/// frame below must appear there verbatim.
#[test]
fn protocol_md_vectors() {
    let doc = include_str!("../../PROTOCOL.md");
    let all: Vec<(FrameKind, String)> = vectors()
        .iter()
        .map(|f| (f.kind(), to_hex(&f.to_vec())))
        .collect();
    if std::env::var_os("HERMES_PRINT_VECTORS").is_some() {
        for (k, hex) in &all {
            println!("{k:?}: {hex}");
        }
    }
    for (kind, hex) in all {
        assert!(
            doc.contains(&hex),
            "PROTOCOL.md lacks the vector for {kind:?}: {hex}"
        );
    }
}

fn vectors() -> Vec<Frame<'static>> {
    vec![
        Frame::Ack { up_to: 5 },
        Frame::Login {
            name: "al",
            signature: [0xaa; 64],
        },
        Frame::GroupSend {
            group_id: [0x11; 16],
            epoch: 2,
            message_id: [0x22; 16],
            ciphertext: b"hi",
        },
        Frame::Deliver(Deliver {
            seq: 7,
            sender: "al",
            group_id: [0x11; 16],
            kind: EntryKind::GroupMessage,
            message_id: [0x22; 16],
            unix_ms: 1000,
            ciphertext: b"hi",
        }),
        Frame::error(
            ErrorCode::StaleEpoch,
            FrameKind::GroupSend as u8,
            [0x22; 16],
        ),
    ]
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_decode(&data);
        let _ = Frame::decode(&data);
    }

    #[test]
    fn mutated_frames_never_panic(idx in 0usize..24, pos in any::<usize>(), val in any::<u8>()) {
        let f = &samples()[idx];
        let mut bytes = f.to_vec();
        let p = pos % bytes.len();
        bytes[p] = val;
        fuzz_decode(&bytes);
    }
}

//! The wire codec: length-prefixed frames carrying versioned messages.
//!
//! # Format (protocol version 2)
//!
//! A frame is a 4-byte big-endian payload length `n` followed by `n` bytes of payload. `n` may
//! not exceed the configured maximum (16 MiB by default); the length is checked before anything
//! is allocated. The payload is one [`Message`] in the [postcard] format: enum variants and
//! lengths are LEB128 varints, integers are varints (zig-zag for signed), byte strings and
//! strings are a varint length and the bytes, fixed arrays are their bytes, `bool` is one byte
//! (0 or 1), `Option` is one byte (0 or 1) then the value. Every field is listed, in order, by
//! the Rust definitions below; the variant numbers are their declaration order. A payload with
//! bytes left over after the message is refused.
//!
//! This module is the one place that knows the header's layout: [`encode_frame`] writes it,
//! [`FrameDecoder`] cuts a byte stream into whole frames (header included), and
//! [`decode_frame`] checks a frame's header and decodes its message. The node takes frames as
//! they come off the wire (`Node::handle_frame`).
//!
//! The first message on every link is a [`Hello`], carrying [`PROTOCOL_VERSION`]; a peer
//! refuses a hello of another version or another mesh. Every decoded message is validated
//! (bounded counts, valid peer ids, bounded names) before anything acts on it.
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use serde::{Deserialize, Serialize};

use crate::liveness::{GossipBeat, Tombstone};
use crate::replica::check_name;
use crate::value::Token;
use crate::{Incarnation, MeshTag, PeerId};

mod view;

/// The protocol version this build speaks. Version 4: views may travel sealed beside QUIC
/// ([`Message::ViewRoute`], [`Message::ViewsHeard`]), messages a peer of version 3 would take
/// for a bad frame. Version 3: the document gives each channel a map of its own (replica
/// schema 2); peers of version 2 keep every record in one map, and the two layouts cannot
/// share a document. Hellos of other versions are refused.
pub const PROTOCOL_VERSION: u16 = 4;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// The most peers a view may list: more is refused as hostile.
pub const MAX_VIEW_ENTRIES: usize = 4096;

/// The most records one leader-records message may carry.
pub const MAX_LEADER_RECORDS: usize = 65_536;

/// The most addresses one [`Message::Peers`] may carry.
pub const MAX_PEER_ADDRESSES: usize = 256;

/// One message between two peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// The first message on a link: who is speaking, for which mesh.
    Hello(Hello),
    /// A heartbeat: the sender's whole liveness view and digests of its state.
    View(View),
    /// A graceful leave: this incarnation is going away now.
    Leave(Incarnation),
    /// An Automerge sync message.
    Sync(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Leader records (written under a term, not stored in the document).
    Leader(Vec<LeaderRecord>),
    /// Peer exchange: where the sender's other peers can be reached (protocol version 2).
    Peers(Vec<PeerAddress>),
    /// Where the sender takes this link's views as sealed UDP datagrams (protocol version 4;
    /// see `statemesh_net::views`).
    ViewRoute(ViewRoute),
    /// Sealed views on the route of this number arrive: the receiver of views sends them no
    /// other way from now on (protocol version 4).
    ViewsHeard(u64),
}

/// Where a peer takes the views of one link sealed: UDP to `port`, at the address its link
/// comes from, under `route`, sealed with the key of that direction of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRoute {
    /// The UDP port of the sender's view socket (on the IP address of its link).
    pub port: u16,
    /// The route number views are sealed under.
    pub route: u64,
}

/// Where a peer can be reached: the address of the sender's link to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// The peer.
    pub peer: PeerId,
    /// Its QUIC address, as the sender reaches it.
    pub addr: std::net::SocketAddr,
}

/// The first message on a link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The mesh it belongs to.
    pub mesh: MeshTag,
    /// Its current incarnation.
    pub incarnation: Incarnation,
    /// Whether it may lead.
    pub eligible: bool,
}

/// A heartbeat and gossiped view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Beats: the sender's own (first) and those of the peers it considers live.
    pub beats: Vec<GossipBeat>,
    /// Recently dead incarnations.
    pub tombs: Vec<(PeerId, Tombstone)>,
    /// Leadership terms claimed by peers.
    pub claims: Vec<(PeerId, u64)>,
    /// Digest of the sender's document heads.
    pub doc: [u8; 8],
    /// Digest of the sender's leader records.
    pub leader: [u8; 8],
}

/// One leader record, as gossiped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The channel.
    pub channel: String,
    /// The key.
    pub key: String,
    /// The leader that wrote it.
    pub writer: PeerId,
    /// The term it was written under.
    pub term: u64,
    /// The writer's sequence number for its leader writes.
    pub seq: u64,
    /// The value (flat encoding), or `None` for a deletion.
    pub value: Option<Vec<Token>>,
}

/// A frame or message that could not be decoded. The link it came from should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is shorter than its header.
    #[error("frame of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// The header announces another payload length than the frame holds.
    #[error("frame header announces {announced} payload bytes, the frame holds {actual}")]
    LengthMismatch {
        /// The payload length the header announces.
        announced: usize,
        /// The payload bytes the frame holds.
        actual: usize,
    },
    /// The header announces a payload larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload holds bytes after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A message decoded but breaks a rule (too many entries, a bad name, ...).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// A message that could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message is larger than the frame limit.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Serialization failed.
    #[error("could not encode message: {0}")]
    Serialize(String),
}

/// Encodes `message` as one frame (header included).
pub fn encode_frame(message: &Message, max_frame: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(message, out).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max_frame {
        return Err(EncodeError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let header = u32::try_from(len).map_err(|_| EncodeError::TooLarge {
        len,
        max: max_frame,
    })?;
    out[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(out)
}

/// Whether a frame holds a [`Message::View`], judged from its header and the first byte of its
/// payload alone (postcard writes the variant index first). A runtime may handle views ahead
/// of other frames, so that heartbeats queued behind a large sync exchange are not taken for
/// silence. The frame is still checked and decoded in full when handled.
pub fn is_view(frame: &[u8]) -> bool {
    // `Message::View` is variant 1 (a one-byte varint).
    frame.len() > HEADER_LEN && frame[HEADER_LEN] == 1
}

/// Whether a frame holds a [`Message::Sync`], judged like [`is_view`] from its header and the
/// first byte of its payload alone.
pub fn is_sync(frame: &[u8]) -> bool {
    // `Message::Sync` is variant 3.
    frame.len() > HEADER_LEN && frame[HEADER_LEN] == 3
}

/// The payload length a frame's header announces (`None`: fewer than [`HEADER_LEN`] bytes).
fn announced_len(bytes: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

/// Checks one whole frame's header — present, within `max_frame`, announcing exactly the
/// payload the frame holds — and returns its payload.
pub(crate) fn frame_payload(frame: &[u8], max_frame: usize) -> Result<&[u8], DecodeError> {
    let len = announced_len(frame).ok_or(DecodeError::Truncated(frame.len()))?;
    if len > max_frame {
        return Err(DecodeError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let payload = &frame[HEADER_LEN..];
    if payload.len() != len {
        return Err(DecodeError::LengthMismatch {
            announced: len,
            actual: payload.len(),
        });
    }
    Ok(payload)
}

/// A frame around arbitrary `payload` bytes (its header written, nothing else checked): how
/// tests and fuzz targets feed a node payloads no encoder would make.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn frame_raw(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Decodes and validates one whole frame (header included, as [`FrameDecoder`] returns it):
/// its header is checked first (see [`DecodeError`]), then its message.
pub fn decode_frame(frame: &[u8], max_frame: usize) -> Result<Message, DecodeError> {
    decode_message(frame_payload(frame, max_frame)?)
}

/// Decodes and validates one message payload (a frame without its header). A view goes by
/// the decoder of [`view`], which takes postcard's encoding of it faster; whatever it does
/// not take, postcard decodes.
fn decode_message(payload: &[u8]) -> Result<Message, DecodeError> {
    let message = match view::decode(payload) {
        Some(view) => Message::View(view),
        None => decode_postcard(payload)?,
    };
    validate(&message)?;
    Ok(message)
}

/// Decodes one message payload with postcard alone (not validated).
pub(crate) fn decode_postcard(payload: &[u8]) -> Result<Message, DecodeError> {
    let (message, rest) = postcard::take_from_bytes::<Message>(payload)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(message)
}

/// The view [`view`]'s decoder takes from `payload`, if it takes it: what the fuzz targets
/// compare with [`decode_postcard`].
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_view_fast(payload: &[u8]) -> Option<View> {
    view::decode(payload)
}

fn validate(message: &Message) -> Result<(), DecodeError> {
    match message {
        Message::Hello(_)
        | Message::Leave(_)
        | Message::Sync(_)
        | Message::ViewRoute(_)
        | Message::ViewsHeard(_) => Ok(()),
        Message::Peers(peers) => {
            if peers.len() > MAX_PEER_ADDRESSES {
                return Err(DecodeError::Invalid("too many peer addresses"));
            }
            Ok(())
        }
        Message::View(v) => {
            if v.beats.is_empty() {
                return Err(DecodeError::Invalid(
                    "a view must carry the sender's own beat",
                ));
            }
            if v.beats.len() > MAX_VIEW_ENTRIES
                || v.tombs.len() > MAX_VIEW_ENTRIES
                || v.claims.len() > MAX_VIEW_ENTRIES
            {
                return Err(DecodeError::Invalid("view lists too many peers"));
            }
            Ok(())
        }
        Message::Leader(records) => {
            if records.len() > MAX_LEADER_RECORDS {
                return Err(DecodeError::Invalid("too many leader records"));
            }
            for r in records {
                if check_name(&r.channel).is_err() || check_name(&r.key).is_err() {
                    return Err(DecodeError::Invalid(
                        "leader record with an invalid channel or key",
                    ));
                }
                if let Some(tokens) = &r.value {
                    crate::Value::from_tokens(tokens).map_err(|_| {
                        DecodeError::Invalid("leader record with a malformed value")
                    })?;
                }
            }
            Ok(())
        }
    }
}

/// Cuts a byte stream into whole frames (header included), enforcing the size limit before
/// allocating.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: bytes::BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing payloads larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: bytes::BytesMut::new(),
            max_frame,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, header included, if one has arrived: what
    /// [`decode_frame`] and `Node::handle_frame` take. After an error the stream is unusable
    /// and the link must be closed.
    pub fn next_frame(&mut self) -> Result<Option<bytes::Bytes>, DecodeError> {
        let Some(len) = announced_len(&self.buf) else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(HEADER_LEN + len).freeze()))
    }

    /// The next complete, validated message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        self.next_frame()?
            .map(|f| decode_frame(&f, self.max_frame))
            .transpose()
    }

    /// The bytes received but not yet returned as frames (to hand a stream over to another
    /// reader).
    pub fn into_buffered(self) -> Vec<u8> {
        self.buf.to_vec()
    }
}

/// Serializes `Vec<u8>` as one byte string rather than a sequence of integers.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <&'de [u8]>::deserialize(d).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::DeathCause;
    use crate::vv::Beat;
    use proptest::prelude::*;

    use crate::id::test_peer as peer;

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u8>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(v, t, p, n, e)| {
                    Message::Hello(Hello {
                        version: v,
                        mesh: MeshTag(t),
                        incarnation: Incarnation {
                            peer: peer(p),
                            number: n,
                        },
                        eligible: e,
                    })
                }),
            (
                proptest::collection::vec(
                    (any::<u8>(), any::<u64>(), any::<u64>(), any::<bool>()),
                    1..5
                ),
                any::<[u8; 8]>()
            )
                .prop_map(|(beats, doc)| Message::View(View {
                    beats: beats
                        .into_iter()
                        .map(|(p, i, c, e)| GossipBeat {
                            peer: peer(p),
                            beat: Beat {
                                incarnation: i,
                                counter: c
                            },
                            eligible: e
                        })
                        .collect(),
                    tombs: vec![(
                        peer(9),
                        Tombstone {
                            incarnation: 2,
                            cause: DeathCause::Left
                        }
                    )],
                    claims: vec![(peer(1), 7)],
                    doc,
                    leader: [3; 8],
                })),
            (any::<u8>(), any::<u64>()).prop_map(|(p, n)| Message::Leave(Incarnation {
                peer: peer(p),
                number: n
            })),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Message::Sync),
            (any::<u16>(), any::<u64>())
                .prop_map(|(port, route)| Message::ViewRoute(ViewRoute { port, route })),
            any::<u64>().prop_map(Message::ViewsHeard),
            proptest::collection::vec((any::<u8>(), any::<[u8; 4]>(), any::<u16>()), 0..8)
                .prop_map(|v| Message::Peers(
                    v.into_iter()
                        .map(|(p, ip, port)| PeerAddress {
                            peer: peer(p),
                            addr: std::net::SocketAddr::from((ip, port)),
                        })
                        .collect()
                )),
            (
                "[a-z]{1,8}",
                "[a-z:0-9]{1,8}",
                any::<u64>(),
                any::<u64>(),
                any::<i64>()
            )
                .prop_map(|(c, k, t, s, v)| {
                    Message::Leader(vec![LeaderRecord {
                        channel: c,
                        key: k,
                        writer: peer(4),
                        term: t,
                        seq: s,
                        value: Some(crate::Value::Int(v).to_tokens()),
                    }])
                }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(m in message()) {
            let frame = encode_frame(&m, 1 << 20).expect("fits");
            let mut d = FrameDecoder::new(1 << 20);
            // Feed byte by byte: partial frames must wait, not fail.
            for (i, b) in frame.iter().enumerate() {
                d.extend(&[*b]);
                let got = d.next_message().expect("valid");
                if i + 1 < frame.len() {
                    prop_assert!(got.is_none());
                } else {
                    prop_assert_eq!(got, Some(m.clone()));
                }
            }
        }

        #[test]
        fn is_view_tells_views_from_every_other_message(m in message()) {
            let frame = encode_frame(&m, 1 << 20).expect("fits");
            prop_assert_eq!(is_view(&frame), matches!(m, Message::View(_)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_message(&bytes);
            let _ = decode_frame(&bytes, 128);
            let mut d = FrameDecoder::new(128);
            d.extend(&bytes);
            while let Ok(Some(f)) = d.next_frame() {
                let _ = decode_frame(&f, 128);
            }
        }

        #[test]
        fn corrupted_frames_never_panic(m in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut frame = encode_frame(&m, 1 << 20).expect("fits");
            for (i, b) in flips {
                let n = frame.len();
                frame[i % n] ^= b;
            }
            let mut d = FrameDecoder::new(1 << 20);
            d.extend(&frame);
            let _ = d.next_message();
        }
    }

    #[test]
    fn oversize_is_refused_before_allocating() {
        let mut d = FrameDecoder::new(1024);
        d.extend(&u32::MAX.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::TooLarge {
                len: u32::MAX as usize,
                max: 1024
            })
        );
        let big = Message::Sync(vec![0; 2048]);
        assert!(matches!(
            encode_frame(&big, 1024),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_bad_contents_are_refused() {
        let mut frame = encode_frame(&Message::Sync(vec![1, 2]), 1024).expect("fits");
        frame.push(0);
        assert_eq!(
            decode_message(&frame[HEADER_LEN..]),
            Err(DecodeError::Trailing(1))
        );
        // A header that does not announce the byte added is a header error first.
        assert_eq!(
            decode_frame(&frame, 1024),
            Err(DecodeError::LengthMismatch {
                announced: 4,
                actual: 5
            })
        );
        let empty_view = Message::View(View {
            beats: vec![],
            tombs: vec![],
            claims: vec![],
            doc: [0; 8],
            leader: [0; 8],
        });
        let frame = encode_frame(&empty_view, 1024).expect("fits");
        assert!(matches!(
            decode_message(&frame[HEADER_LEN..]),
            Err(DecodeError::Invalid(_))
        ));
        let bad_name = Message::Leader(vec![LeaderRecord {
            channel: "a\u{1f}b".into(),
            key: "k".into(),
            writer: peer(1),
            term: 1,
            seq: 1,
            value: None,
        }]);
        let frame = encode_frame(&bad_name, 1024).expect("fits");
        assert!(matches!(
            decode_message(&frame[HEADER_LEN..]),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn non_v7_peer_ids_are_refused() {
        let mut frame = encode_frame(
            &Message::Leave(Incarnation {
                peer: peer(1),
                number: 0,
            }),
            1024,
        )
        .expect("fits");
        // Payload: variant (1 byte), UUID length (1 byte), then the UUID, whose version nibble
        // is the high half of its byte 6.
        assert_eq!(frame[HEADER_LEN + 1], 16);
        frame[HEADER_LEN + 2 + 6] = 0x40;
        assert!(matches!(
            decode_message(&frame[HEADER_LEN..]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn frame_headers_are_checked() {
        let frame = encode_frame(&Message::Sync(vec![7; 10]), 1024).expect("fits");
        assert_eq!(decode_frame(&frame, 1024), Ok(Message::Sync(vec![7; 10])));
        // Shorter than a header, cut short, too long, over the limit.
        assert_eq!(
            decode_frame(&frame[..3], 1024),
            Err(DecodeError::Truncated(3))
        );
        assert_eq!(
            decode_frame(&frame[..frame.len() - 1], 1024),
            Err(DecodeError::LengthMismatch {
                announced: 12,
                actual: 11
            })
        );
        let mut long = frame.clone();
        long.extend_from_slice(&[0; 5]);
        assert!(matches!(
            decode_frame(&long, 1024),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert_eq!(
            decode_frame(&frame, 8),
            Err(DecodeError::TooLarge { len: 12, max: 8 })
        );
        // `is_view` reads the frame's header, not the payload's first byte: a sync message
        // whose header happens to hold a 1 is not a view.
        assert!(!is_view(&frame));
        assert!(!is_view(&[0, 0, 0, 1]));
    }

    #[test]
    fn frames_come_out_whole_and_in_order() {
        let a = encode_frame(&Message::Sync(vec![1; 3]), 1024).expect("fits");
        let b = encode_frame(&Message::Sync(vec![2; 300]), 1024).expect("fits");
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        let mut d = FrameDecoder::new(1024);
        for chunk in stream.chunks(7) {
            d.extend(chunk);
        }
        assert_eq!(d.next_frame().expect("valid").as_deref(), Some(&a[..]));
        assert_eq!(d.next_frame().expect("valid").as_deref(), Some(&b[..]));
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.into_buffered().is_empty());
    }
}

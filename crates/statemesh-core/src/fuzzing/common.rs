//! What the fuzz targets share: fixed peer ids and mesh, a node made and drained as the runtime
//! would, everything a node shows (to compare before and after an input), and a byte reader.

use std::fmt::Display;

use automerge::ChangeHash;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::codec::{self, FrameDecoder, Message};
use crate::{
    Config, Event, Explanation, Hello, Incarnation, Leadership, MeshTag, Node, PeerId, Scope, Time,
    Value,
};

pub(super) const T0: Time = Time::ZERO;
pub(super) const PEERS: usize = 4;
pub(super) const MAX: usize = 1 << 16;

pub(super) fn mesh() -> MeshTag {
    MeshTag::derive(b"statemesh fuzzing secret", "fuzz")
}

/// Four fixed peer ids, in increasing order.
pub(super) fn peer_ids() -> [PeerId; PEERS] {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    std::array::from_fn(|i| PeerId::generate(1_700_000_000_000 + 1000 * i as u64, &mut rng))
}

pub(super) fn new_node(me: PeerId, config: Config, seed: u64) -> Node {
    Node::new(config, mesh(), me, &mut ChaCha8Rng::seed_from_u64(seed), T0)
}

pub(super) fn hello_of(peer: PeerId, number: u64, eligible: bool) -> Hello {
    Hello {
        version: codec::PROTOCOL_VERSION,
        mesh: mesh(),
        incarnation: Incarnation { peer, number },
        eligible,
    }
}

/// Drains every output of `node`: each frame must decode (a node never sends what it would
/// refuse), persists are acknowledged. Returns the frames and the events.
pub(super) fn drain(node: &mut Node) -> (Vec<(PeerId, Message)>, Vec<Event>) {
    let max = node.config().max_frame;
    let mut frames = Vec::new();
    while let Some(t) = node.poll_transmit() {
        let mut d = FrameDecoder::new(max);
        d.extend(&t.frame);
        let message = d
            .next_message()
            .unwrap_or_else(|e| panic!("the node sent a frame it refuses itself: {e}"))
            .unwrap_or_else(|| panic!("the node sent an incomplete frame"));
        assert!(
            d.into_buffered().is_empty(),
            "the node sent bytes after a frame"
        );
        frames.push((t.to, message));
    }
    while let Some(p) = node.poll_persist() {
        node.persisted(p.seq());
    }
    let events = std::iter::from_fn(|| node.poll_event()).collect();
    (frames, events)
}

/// `message` as one frame, header included.
pub(super) fn frame(message: &Message) -> Vec<u8> {
    codec::encode_frame(message, usize::MAX)
        .unwrap_or_else(|e| panic!("a message built here encodes: {e}"))
}

/// The payload of `message`'s frame (what the `sync_receive` seeds hold).
pub(super) fn payload(message: &Message) -> Vec<u8> {
    let frame = frame(message);
    codec::frame_payload(&frame, usize::MAX)
        .unwrap_or_else(|e| panic!("a frame built here has a valid header: {e}"))
        .to_vec()
}

/// Everything an application or a peer can observe of a node.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    pub(super) heads: Vec<ChangeHash>,
    saved: Vec<u8>,
    records: Vec<(String, String, String)>,
    counters: Vec<(String, i64)>,
    leader: Vec<(String, String, String)>,
    leadership: Leadership,
    my_term: Option<u64>,
    explanation: Explanation,
    linked: Vec<PeerId>,
}

impl Snapshot {
    /// Reads everything (which also checks that every read works on whatever was accepted).
    pub(super) fn of(node: &mut Node, now: Time) -> Self {
        let mut records = Vec::new();
        for channel in node.channels() {
            for key in node.keys(&channel) {
                let value = format!("{:?}", node.get::<Value>(&channel, &key));
                records.push((channel.clone(), key, value));
            }
        }
        let counters = node
            .counter_names()
            .into_iter()
            .map(|name| {
                let v = node.counter(&name);
                (name, v)
            })
            .collect();
        let mut leader = Vec::new();
        for channel in node.leader_channels() {
            for key in node.leader_keys(&channel) {
                let value = format!("{:?}", node.leader_get::<Value>(&channel, &key));
                leader.push((channel.clone(), key, value));
            }
        }
        Self {
            heads: node.heads(),
            saved: node.replica().doc().save_nocompress(),
            records,
            counters,
            leader,
            leadership: node.leadership(),
            my_term: node.my_term(),
            explanation: node.explain(now),
            linked: node.linked_peers(),
        }
    }

    pub(super) fn assert_same(&self, after: &Self, why: &dyn Display) {
        assert_eq!(self.heads, after.heads, "{why}: the heads changed");
        assert!(
            self.saved == after.saved,
            "{why}: the saved document changed ({} -> {} bytes)",
            self.saved.len(),
            after.saved.len()
        );
        assert_eq!(self.records, after.records, "{why}: the records changed");
        assert_eq!(self.counters, after.counters, "{why}: the counters changed");
        assert_eq!(
            self.leader, after.leader,
            "{why}: the leader records changed"
        );
        assert_eq!(
            self.leadership, after.leadership,
            "{why}: the leadership changed"
        );
        assert_eq!(self.my_term, after.my_term, "{why}: the term changed");
        assert_eq!(
            self.explanation, after.explanation,
            "{why}: the liveness view changed"
        );
        assert_eq!(self.linked, after.linked, "{why}: the links changed");
    }
}

/// After whatever it accepted: a local write succeeds and reads back, outputs drain, and the
/// saved document loads whole into a fresh node with the same heads.
pub(super) fn assert_usable(node: &mut Node) {
    let value = "still usable".to_string();
    node.put("fuzz", "after", &value, Scope::Durable)
        .unwrap_or_else(|e| panic!("a write after the input failed: {e}"));
    node.add("fuzz/after", 1, Scope::Presence)
        .unwrap_or_else(|e| panic!("a counter write after the input failed: {e}"));
    assert_eq!(
        node.get::<String>("fuzz", "after")
            .unwrap_or_else(|e| panic!("reading back a write failed: {e}")),
        Some(value),
        "a write after the input does not read back"
    );
    drain(node);
    let saved = node.replica().save();
    let mut fresh = new_node(peer_ids()[3], Config::default(), 99);
    let report = fresh
        .load(&saved)
        .unwrap_or_else(|e| panic!("the node's own saved document does not load: {e}"));
    assert!(report.complete, "the node's own saved document is damaged");
    assert_eq!(
        fresh.heads(),
        node.heads(),
        "the saved document reloads with other heads"
    );
}

/// Reads a fuzz input a byte at a time; past its end every read is zero.
pub(super) struct Reader<'a> {
    pub(super) data: &'a [u8],
}

impl Reader<'_> {
    pub(super) fn next(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    pub(super) fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    pub(super) fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.byte()))
    }

    /// A number that is small, near the top of the range, or anything.
    pub(super) fn number(&mut self) -> u64 {
        match self.byte() % 4 {
            0 | 1 => u64::from(self.byte()),
            2 => u64::MAX - u64::from(self.byte()),
            _ => self.u64(),
        }
    }

    pub(super) fn bytes(&mut self) -> Vec<u8> {
        let n = self.byte() % 16;
        (0..n).map(|_| self.byte()).collect()
    }
}

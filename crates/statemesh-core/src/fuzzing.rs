//! The bodies of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`), and the seed inputs
//! they start from.
//!
//! Every surface that reads untrusted bytes or event sequences has a target. Each target is a
//! one-liner calling the function of the same name here, and `tests/tests/crashers.rs` replays
//! every committed crash and seed input through the same functions with the ordinary test
//! runner. A function drives the real code path its input takes and panics when an invariant
//! breaks; it must not panic otherwise. Everything is deterministic (fixed RNG seeds, fixed peer
//! ids, virtual time), so an input replays exactly.
//!
//! | target | input | checked |
//! |---|---|---|
//! | [`frame_decode`] | a byte stream from a link | no panic; accepted messages re-encode identically |
//! | [`sync_receive`] | one payload from a linked peer | no panic escapes; a refused payload changes nothing; the node stays usable |
//! | [`state_load`] | a persisted state file | no panic; a report or a typed refusal; loading is idempotent; the node stays usable |
//! | [`liveness`] | a sequence of liveness events | the election and liveness invariants after every step |

use std::collections::BTreeMap;
use std::fmt::Display;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::codec::{self, FrameDecoder, HEADER_LEN, Message, View};
use crate::liveness::{GossipBeat, Term, Tombstone};
use crate::vv::Beat;
use crate::{
    Config, DeathCause, Event, Explanation, Hello, Incarnation, Leadership, LinkDown, MeshTag,
    Node, PeerId, Persist, Scope, Time, Value, WriteError,
};

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus and
/// crasher folders).
pub const TARGETS: [&str; 4] = ["frame_decode", "sync_receive", "state_load", "liveness"];

/// The function behind fuzz target `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    match name {
        "frame_decode" => Some(frame_decode),
        "sync_receive" => Some(sync_receive),
        "state_load" => Some(state_load),
        "liveness" => Some(liveness),
        _ => None,
    }
}

/// Installs a panic hook for fuzzing; call it once before the first input.
///
/// libfuzzer-sys installs a hook that aborts on *every* panic, including one the node contains
/// with `catch_unwind` (a sync message or a stored file that makes the CRDT library panic is
/// refused: that is the behaviour under test). Only a panic that escapes a target is a finding.
/// This hook only records the panic (printing every contained one would also slow fuzzing
/// down); the target functions print it if it escapes, and libfuzzer-sys then aborts.
pub fn init() {
    std::panic::set_hook(Box::new(|info| {
        // Symbols are resolved only if the panic escapes.
        let report = (info.to_string(), std::backtrace::Backtrace::force_capture());
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(report));
    }));
}

thread_local! {
    /// The last panic recorded by the hook [`init`] installs, and where it happened.
    static LAST_PANIC: std::cell::RefCell<Option<(String, std::backtrace::Backtrace)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs a target's body; if a panic escapes it, prints what the hook recorded of it (nothing is
/// recorded without [`init`]: the standard hook printed it already) and lets it go on.
fn escaping(body: impl FnOnce()) {
    LAST_PANIC.with(|last| last.borrow_mut().take());
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        if let Some((message, backtrace)) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
            eprintln!("panic escaped the target: {message}\n{backtrace}");
        }
        std::panic::resume_unwind(panic);
    }
}

const T0: Time = Time::ZERO;
const PEERS: usize = 4;
const MAX: usize = 1 << 16;

fn mesh() -> MeshTag {
    MeshTag::derive(b"statemesh fuzzing secret", "fuzz")
}

/// Four fixed peer ids, in increasing order.
fn peer_ids() -> [PeerId; PEERS] {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    std::array::from_fn(|i| PeerId::generate(1_700_000_000_000 + 1000 * i as u64, &mut rng))
}

fn new_node(me: PeerId, config: Config, seed: u64) -> Node {
    Node::new(config, mesh(), me, &mut ChaCha8Rng::seed_from_u64(seed), T0)
}

fn hello_of(peer: PeerId, number: u64, eligible: bool) -> Hello {
    Hello {
        version: codec::PROTOCOL_VERSION,
        mesh: mesh(),
        incarnation: Incarnation { peer, number },
        eligible,
    }
}

/// Drains every output of `node`: each frame must decode (a node never sends what it would
/// refuse), persists are acknowledged. Returns the frames and the events.
fn drain(node: &mut Node) -> (Vec<(PeerId, Message)>, Vec<Event>) {
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
        match p {
            Persist::Append { seq, .. } | Persist::Snapshot { seq, .. } => node.persisted(seq),
        }
    }
    let events = std::iter::from_fn(|| node.poll_event()).collect();
    (frames, events)
}

fn payload(message: &Message) -> Vec<u8> {
    let frame = codec::encode_frame(message, usize::MAX)
        .unwrap_or_else(|e| panic!("a message built here encodes: {e}"));
    frame[HEADER_LEN..].to_vec()
}

/// Everything an application or a peer can observe of a node.
#[derive(Debug, PartialEq)]
struct Snapshot {
    heads: Vec<ChangeHash>,
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
    fn of(node: &Node, now: Time) -> Self {
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

    fn assert_same(&self, after: &Self, why: &dyn Display) {
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
fn assert_usable(node: &mut Node) {
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

// ---- frame_decode ----

/// Frame splitting and message decoding on an arbitrary byte stream: never a panic, never a
/// payload beyond the frame limit, and every accepted message re-encodes to a frame that
/// decodes and re-encodes identically. (This also covers message decoding of arbitrary
/// payloads: the whole input is decoded as one payload first.)
pub fn frame_decode(data: &[u8]) {
    escaping(|| frame_decode_inner(data));
}

fn frame_decode_inner(data: &[u8]) {
    let _ = codec::decode_message(data);
    let mut decoder = FrameDecoder::new(MAX);
    decoder.extend(data);
    while let Ok(Some(payload)) = decoder.next_payload() {
        assert!(payload.len() <= MAX);
        if let Ok(message) = codec::decode_message(&payload) {
            let frame = codec::encode_frame(&message, MAX)
                .unwrap_or_else(|e| panic!("a decoded message does not re-encode: {e}"));
            let mut again = FrameDecoder::new(MAX);
            again.extend(&frame);
            let back = again
                .next_message()
                .unwrap_or_else(|e| panic!("a re-encoded message does not decode: {e}"))
                .unwrap_or_else(|| panic!("a re-encoded frame is incomplete"));
            // Compared as bytes: a float NaN inside a value is not equal to itself.
            let twice = codec::encode_frame(&back, MAX)
                .unwrap_or_else(|e| panic!("a decoded message does not re-encode: {e}"));
            assert_eq!(twice, frame, "a message changed through a round trip");
        }
    }
}

// ---- sync_receive ----

/// The node under test in [`sync_receive`]: some state, a leadership term recorded in its
/// document, and a link up with `peer` (hello exchanged, its first view and sync message sent).
struct SyncFixture {
    node: Node,
    peer: PeerId,
    /// What the node sent `peer` when the link came up.
    sent: Vec<Message>,
}

fn sync_fixture() -> SyncFixture {
    let [me, peer, ..] = peer_ids();
    let mut node = new_node(me, Config::default(), 1);
    // Alone and settled, it leads under term 1 (recorded in the document); it keeps leading
    // once the higher peer links.
    node.handle_settled(T0);
    let written = (|| -> Result<(), WriteError> {
        node.put("probes", "api:443", &"up".to_string(), Scope::Durable)?;
        node.put("windows", &me.to_string(), &true, Scope::Presence)?;
        node.add("ws/desired", 2, Scope::Durable)?;
        node.add("ws/running", 1, Scope::Presence)?;
        node.put("config", "limits", &limits(), Scope::Durable)?;
        let term = node.my_term().unwrap_or_default();
        node.leader_put(T0, term, "health", "api:443", Some(&"ok".to_string()))?;
        Ok(())
    })();
    written.unwrap_or_else(|e| panic!("fixture writes: {e}"));
    drain(&mut node);
    let hello = hello_of(peer, 0, true);
    node.check_hello(&hello)
        .unwrap_or_else(|e| panic!("fixture hello: {e}"));
    node.handle_link_up(T0, &hello);
    let sent = drain(&mut node).0.into_iter().map(|(_, m)| m).collect();
    SyncFixture { node, peer, sent }
}

fn limits() -> Value {
    Value::Map(BTreeMap::from([
        ("retries".to_string(), Value::Int(3)),
        (
            "hosts".to_string(),
            Value::List(vec![Value::Str("a".into()), Value::Uint(443)]),
        ),
        ("ratio".to_string(), Value::F64(0.5)),
        ("blob".to_string(), Value::Bytes(vec![0, 1, 2])),
    ]))
}

/// Feeds `payload` from `from` and checks the outcome against `before` (the node's state
/// before): a refused payload leaves everything observable as it was; an accepted one leaves a
/// node whose every read and output works. Returns the node's state after.
fn receive_checked(
    node: &mut Node,
    from: PeerId,
    payload: &[u8],
    what: &str,
    before: Snapshot,
) -> Snapshot {
    let result = node.handle_payload(T0, from, payload);
    drain(node);
    let after = Snapshot::of(node, T0);
    if let Err(e) = result {
        before.assert_same(&after, &format_args!("refused {what} ({e})"));
    }
    after
}

/// The whole path a linked peer's bytes take into a live document
/// ([`Node::handle_payload`]), on a node with state and a link up with that peer. The input is
/// fed three ways, in turn, to the same node:
///
/// 1. as a raw payload (any message kind);
/// 2. wrapped in a well-formed `Message::Sync`, so it reaches Automerge's sync decoding;
/// 3. as a program of hostile changes (see `hostile_sync`: made through Automerge on a copy of
///    the node's document, or encoded directly from arbitrary operations, under any actor —
///    even the node's own or the genesis actor), sent as a sync message, so that changes with
///    valid checksums but hostile contents reach the node.
///
/// After each: no panic escapes; a refused payload leaves the document (saved bytes, heads,
/// every record, counter and leader record) and the liveness view exactly as they were; an
/// accepted one leaves a node whose reads work and whose frames decode. At the end a local write
/// succeeds and the saved document reloads whole.
pub fn sync_receive(data: &[u8]) {
    escaping(|| sync_receive_inner(data));
}

fn sync_receive_inner(data: &[u8]) {
    let SyncFixture { mut node, peer, .. } = sync_fixture();
    let base = node.replica().doc().clone();
    let state = Snapshot::of(&node, T0);
    let state = receive_checked(&mut node, peer, data, "raw payload", state);
    let wrapped = payload(&Message::Sync(data.to_vec()));
    let state = receive_checked(&mut node, peer, &wrapped, "sync message", state);
    if let Some(bytes) = hostile_sync(&base, data) {
        let hostile = payload(&Message::Sync(bytes));
        receive_checked(&mut node, peer, &hostile, "hostile changes", state);
    }
    assert_usable(&mut node);
}

/// Reads a fuzz input a byte at a time; past its end every read is zero.
struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn next(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.byte()))
    }

    /// A number that is small, near the top of the range, or anything.
    fn number(&mut self) -> u64 {
        match self.byte() % 4 {
            0 | 1 => u64::from(self.byte()),
            2 => u64::MAX - u64::from(self.byte()),
            _ => self.u64(),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = self.byte() % 16;
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Names a hostile program may use as map keys: the layout's own, statemesh's flat keys, and
/// arbitrary ones.
fn key(r: &mut Reader<'_>, ids: &[PeerId; PEERS]) -> String {
    let sep = crate::replica::SEP;
    let (me, peer) = (ids[0], ids[1]);
    match r.byte() % 16 {
        0 => "r".into(),
        1 => "c".into(),
        2 => "m".into(),
        3 => "terms".into(),
        4 => "schema".into(),
        5 => "v".into(),
        6 => "w".into(),
        7 => "p".into(),
        8 => me.to_string(),
        9 => peer.to_string(),
        10 => format!("probes{sep}api:443"),
        11 => format!("windows{sep}{me}"),
        12 => format!("ws/desired{sep}{me}{sep}d"),
        13 => format!("ws/running{sep}{peer}{sep}p"),
        14 => format!("config{sep}limits"),
        _ => String::from_utf8_lossy(&r.bytes()).into_owned(),
    }
}

/// A scalar of any type; values of unknown type (which the format allows for forward
/// compatibility) only when `unknown`.
fn scalar(r: &mut Reader<'_>, ids: &[PeerId; PEERS], unknown: bool) -> ScalarValue {
    match r.byte() % if unknown { 10 } else { 9 } {
        0 => ScalarValue::Null,
        1 => ScalarValue::Boolean(r.byte() & 1 == 1),
        2 => ScalarValue::Int(r.number() as i64),
        3 => ScalarValue::Uint(r.number()),
        4 => ScalarValue::F64(f64::from_bits(r.u64())),
        5 => ScalarValue::Str(key(r, ids).into()),
        6 => ScalarValue::Bytes(r.bytes()),
        7 => ScalarValue::Counter((r.number() as i64).into()),
        8 => ScalarValue::Timestamp(r.number() as i64),
        _ => ScalarValue::Unknown {
            type_code: r.byte(),
            bytes: r.bytes(),
        },
    }
}

fn obj_type(r: &mut Reader<'_>) -> ObjType {
    match r.byte() % 4 {
        0 => ObjType::Map,
        1 => ObjType::List,
        2 => ObjType::Text,
        _ => ObjType::Table,
    }
}

/// The most operations of one hostile program, and the most changes.
const MAX_OPS: usize = 256;
const MAX_CHANGES: usize = 16;

/// Builds, from the program `data`, the sync message a hostile peer sends: changes made on a
/// copy of `base` (the receiver's document) under a chosen actor, each either
///
/// - made through Automerge's own transactions (puts of any type anywhere, objects, deletes,
///   increments, text, statemesh-shaped records): well-formed changes with hostile contents;
/// - or encoded directly from operations (any action, object, key, predecessors, actor,
///   sequence number, start op, dependencies, values of unknown type): what a peer running
///   something other than Automerge could send.
///
/// Returns `None` when the hostile side itself cannot build the message (Automerge refuses or
/// panics on what it was asked to make: that is not the node under test).
fn hostile_sync(base: &Automerge, data: &[u8]) -> Option<Vec<u8>> {
    let (chunks, heads) = hostile_changes(base, data)?;
    let message = automerge::sync::Message {
        heads,
        need: Vec::new(),
        have: Vec::new(),
        changes: chunks.into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    };
    Some(message.encode())
}

/// The hostile changes of the program `data` made on a copy of `base` (see [`hostile_sync`]),
/// encoded, and the heads a peer would announce with them. `None` when the hostile side itself
/// fails to make them.
fn hostile_changes(base: &Automerge, data: &[u8]) -> Option<(Vec<Vec<u8>>, Vec<ChangeHash>)> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make_changes(base, data))).ok()
}

fn make_changes(base: &Automerge, data: &[u8]) -> (Vec<Vec<u8>>, Vec<ChangeHash>) {
    let ids = peer_ids();
    let mut r = Reader { data };
    let actors = [
        ActorId::from([0u8; 16].as_slice()),
        base.get_actor().clone(),
        ActorId::from([0xb0u8; 16].as_slice()),
    ];
    let mut doc = base
        .clone()
        .with_actor(actors[usize::from(r.byte()) % 3].clone());
    let mut objs: Vec<ObjId> = vec![ROOT];
    for name in ["r", "c", "m"] {
        if let Ok(Some((_, id))) = doc.get(ROOT, name) {
            objs.push(id);
        }
    }
    if let Some(m) = objs.get(3).cloned()
        && let Ok(Some((_, terms))) = doc.get(&m, "terms")
    {
        objs.push(terms);
    }
    let mut raw = RawChanges {
        deps: doc.get_heads(),
        seqs: BTreeMap::new(),
        next_op: doc.stats().num_ops + 1,
        made: Vec::new(),
    };
    let mut chunks = Vec::new();
    let mut ops = 0;
    while ops < MAX_OPS && chunks.len() < MAX_CHANGES && !r.data.is_empty() {
        let time = r.number() as i64;
        if r.byte() % 4 == 3 {
            let change = raw.change(&mut r, &ids, &actors, time, &mut ops);
            chunks.push(change);
            continue;
        }
        let mut tx = doc.transaction();
        while let Some(op) = r.next() {
            ops += 1;
            if ops > MAX_OPS || op % 8 == 7 {
                break;
            }
            let obj = objs[usize::from(r.byte()) % objs.len()].clone();
            // Operations the document refuses (a map key on a list, ...) are simply skipped.
            let _ = match op % 8 {
                0 => {
                    let (k, v) = (key(&mut r, &ids), scalar(&mut r, &ids, false));
                    tx.put(&obj, k, v)
                }
                1 => {
                    let (k, t) = (key(&mut r, &ids), obj_type(&mut r));
                    tx.put_object(&obj, k, t).map(|id| {
                        if objs.len() < 64 {
                            objs.push(id);
                        }
                    })
                }
                2 => {
                    let k = key(&mut r, &ids);
                    tx.delete(&obj, k)
                }
                3 => {
                    let (k, by) = (key(&mut r, &ids), r.number() as i64);
                    tx.increment(&obj, k, by)
                }
                4 => {
                    let (at, v) = (usize::from(r.byte()), scalar(&mut r, &ids, false));
                    tx.insert(&obj, at, v)
                }
                5 => {
                    let (at, del) = (usize::from(r.byte()), isize::from(r.byte() % 8));
                    let text = key(&mut r, &ids);
                    tx.splice_text(&obj, at, del, &text)
                }
                _ => {
                    // A record shaped like statemesh's own: { v, w, p }.
                    let k = key(&mut r, &ids);
                    let v = scalar(&mut r, &ids, false);
                    let (w, p) = (key(&mut r, &ids), r.byte() & 1);
                    tx.put_object(&obj, k, ObjType::Map).and_then(|rec| {
                        tx.put(&rec, "v", v)?;
                        tx.put(&rec, "w", w)?;
                        tx.put(&rec, "p", p == 1)
                    })
                }
            };
        }
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(time));
        if let Some(mut change) = hash.and_then(|h| doc.get_change_by_hash(&h)) {
            raw.deps = vec![change.hash()];
            chunks.push(change.bytes().into_owned());
        }
    }
    let heads = match r.byte() % 3 {
        0 => raw.deps.clone(),
        1 => doc.get_heads(),
        _ => Vec::new(),
    };
    (chunks, heads)
}

/// State for encoding changes directly from operations.
struct RawChanges {
    /// The dependencies of the next change (the last one made, or the base heads).
    deps: Vec<ChangeHash>,
    /// The last sequence number used per actor.
    seqs: BTreeMap<Vec<u8>, u64>,
    /// The next operation counter, as far as the hostile side knows.
    next_op: u64,
    /// Operations made so far (objects and elements to refer to).
    made: Vec<automerge::legacy::OpId>,
}

impl RawChanges {
    /// An operation id: one of the genesis operations (the layout's containers), one made
    /// earlier, or any.
    fn op_id(&self, r: &mut Reader<'_>, actors: &[ActorId; 3]) -> automerge::legacy::OpId {
        use automerge::legacy::OpId;
        match r.byte() % 4 {
            0 | 1 => OpId(1 + u64::from(r.byte() % 5), actors[0].clone()),
            2 if !self.made.is_empty() => {
                self.made[usize::from(r.byte()) % self.made.len()].clone()
            }
            _ => OpId(r.number(), actors[usize::from(r.byte()) % 3].clone()),
        }
    }

    fn change(
        &mut self,
        r: &mut Reader<'_>,
        ids: &[PeerId; PEERS],
        actors: &[ActorId; 3],
        time: i64,
        ops: &mut usize,
    ) -> Vec<u8> {
        use automerge::legacy::{ElementId, Key, MarkData, ObjectId, Op, OpId, OpType};
        let actor = match r.byte() % 4 {
            3 => ActorId::from(r.bytes().as_slice()),
            i => actors[usize::from(i)].clone(),
        };
        let last = self.seqs.get(actor.to_bytes()).copied().unwrap_or(0);
        let seq = match r.byte() % 4 {
            0 | 1 => last + 1,
            2 => last,
            _ => r.number(),
        };
        self.seqs.insert(actor.to_bytes().to_vec(), seq);
        let start_op = match r.byte() % 4 {
            0 | 1 => self.next_op,
            2 => self.next_op.saturating_sub(1),
            _ => r.number(),
        };
        let deps = match r.byte() % 4 {
            0 | 1 => self.deps.clone(),
            2 => Vec::new(),
            _ => vec![ChangeHash([r.byte(); 32])],
        };
        let n = usize::from(r.byte() % 8);
        let mut operations = Vec::with_capacity(n);
        for i in 0..n {
            *ops += 1;
            let obj = match r.byte() % 3 {
                0 => ObjectId::Root,
                _ => ObjectId::Id(self.op_id(r, actors)),
            };
            let prop = match r.byte() % 3 {
                0 => Key::Seq(ElementId::Head),
                1 => Key::Seq(ElementId::Id(self.op_id(r, actors))),
                _ => Key::Map(key(r, ids).into()),
            };
            let action = match r.byte() % 6 {
                0 => OpType::Make(obj_type(r)),
                1 => OpType::Delete,
                2 => OpType::Increment(r.number() as i64),
                3 => OpType::MarkBegin(MarkData {
                    name: key(r, ids).into(),
                    value: scalar(r, ids, true),
                    expand: r.byte() & 1 == 1,
                }),
                4 => OpType::MarkEnd(r.byte() & 1 == 1),
                _ => OpType::Put(scalar(r, ids, true)),
            };
            let pred = (0..r.byte() % 3).map(|_| self.op_id(r, actors)).collect();
            let insert = r.byte() & 1 == 1;
            operations.push(Op {
                action,
                obj,
                key: prop,
                pred,
                insert,
            });
            if self.made.len() < 64 {
                self.made
                    .push(OpId(start_op.saturating_add(i as u64), actor.clone()));
            }
        }
        self.next_op = start_op.saturating_add(n as u64);
        let message = (r.byte() & 1 == 1).then(|| key(r, ids));
        let extra_bytes = r.bytes();
        let mut change = automerge::Change::from(automerge::ExpandedChange {
            operations,
            actor_id: actor,
            hash: None,
            seq,
            start_op: std::num::NonZeroU64::new(start_op).unwrap_or(std::num::NonZeroU64::MIN),
            time,
            message,
            deps,
            extra_bytes,
            author: None,
        });
        self.deps = vec![change.hash()];
        change.bytes().into_owned()
    }
}

// ---- state_load ----

/// Loading a persisted state file (what `Node::load` does with each file the runtime's store
/// finds at startup) from arbitrary bytes, into a fresh node as at startup. The input is read
/// twice: as the file's bytes, and as a program of hostile changes (see `hostile_sync`) whose
/// chunks make the file, so that well-formed changes with hostile contents are loaded too.
///
/// Never a panic; either a load report or a typed refusal that leaves the document untouched; a
/// report says whether anything changed, and loading the same bytes again changes nothing
/// (merging is idempotent). Then the node is usable: every read works, a write succeeds and
/// persists, the saved document reloads whole, and a new leadership term is above every term
/// stored in what was loaded.
pub fn state_load(data: &[u8]) {
    escaping(|| state_load_inner(data));
}

fn state_load_inner(data: &[u8]) {
    load_checked(data);
    // The second reading: a file of hostile changes (see `hostile_sync`), as a file written
    // with what a peer once sent would hold.
    let [_, me, ..] = peer_ids();
    let base = new_node(me, Config::default(), 1).replica().doc().clone();
    if let Some((chunks, _)) = hostile_changes(&base, data) {
        load_checked(&chunks.concat());
    }
}

/// Loads `file` into a fresh node, as at startup, and checks the outcome (see [`state_load`]).
fn load_checked(file: &[u8]) {
    let [_, me, ..] = peer_ids();
    let mut node = new_node(me, Config::default(), 1);
    let before = Snapshot::of(&node, T0);
    match node.load(file) {
        Ok(report) => {
            let heads = node.heads();
            assert_eq!(
                report.changed,
                heads != before.heads,
                "the report says changed = {} but the heads say otherwise",
                report.changed
            );
            let again = node.load(file).unwrap_or_else(|e| {
                panic!("bytes that loaded once are refused the next time: {e}")
            });
            assert!(!again.changed, "loading the same bytes twice changed more");
            assert_eq!(
                again.complete, report.complete,
                "the same bytes, judged twice"
            );
            assert_eq!(
                node.heads(),
                heads,
                "loading the same bytes twice changed more"
            );
        }
        Err(e) => {
            let after = Snapshot::of(&node, T0);
            before.assert_same(&after, &format_args!("refused file ({e})"));
        }
    }
    Snapshot::of(&node, T0);
    let stored = node.replica().max_stored_term();
    assert_usable(&mut node);
    node.handle_settled(T0);
    let term = node
        .my_term()
        .unwrap_or_else(|| panic!("alone and settled, the node does not lead"));
    assert!(
        term > stored,
        "new term {term} is not above the stored term {stored}"
    );
}

// ---- liveness ----

/// One input of the liveness state machine, as raw bytes from the fuzz input (see
/// [`liveness`] for how each field is read).
#[derive(Clone, Debug)]
enum Step {
    /// Time advances (see [`tick_delay`]), then a tick.
    Tick(u8),
    /// A link comes up with a peer, whose hello carries an incarnation and eligibility.
    LinkUp {
        peer: u8,
        incarnation: u8,
        eligible: bool,
    },
    /// A link goes down.
    LinkDown { peer: u8, certain: bool },
    /// A view arrives from a peer.
    View {
        from: u8,
        beats: Vec<(u8, u8, u8, bool)>,
        tombs: Vec<(u8, u8, u8)>,
        claims: Vec<(u8, u8)>,
    },
    /// A leave message arrives from a peer, naming an incarnation.
    Leave { from: u8, peer: u8, incarnation: u8 },
    /// The runtime's discovery settled.
    Settled,
    /// A leader write under a term.
    LeaderPut(u8),
    /// This node leaves gracefully.
    LocalLeave,
}

const OPS: u8 = 8;

impl Step {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let op = r.next()?;
        Some(match op % OPS {
            0 => Self::Tick(r.byte()),
            1 => Self::LinkUp {
                peer: r.byte(),
                incarnation: r.byte(),
                eligible: r.byte() & 1 == 1,
            },
            2 => Self::LinkDown {
                peer: r.byte(),
                certain: r.byte() & 1 == 1,
            },
            3 => {
                let from = r.byte();
                let beats = (0..r.byte() % 5)
                    .map(|_| (r.byte(), r.byte(), r.byte(), r.byte() & 1 == 1))
                    .collect();
                let tombs = (0..r.byte() % 4)
                    .map(|_| (r.byte(), r.byte(), r.byte()))
                    .collect();
                let claims = (0..r.byte() % 4).map(|_| (r.byte(), r.byte())).collect();
                Self::View {
                    from,
                    beats,
                    tombs,
                    claims,
                }
            }
            4 => Self::Leave {
                from: r.byte(),
                peer: r.byte(),
                incarnation: r.byte(),
            },
            5 => Self::Settled,
            6 => Self::LeaderPut(r.byte()),
            _ => Self::LocalLeave,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Tick(d) => out.extend([0, *d]),
            Self::LinkUp {
                peer,
                incarnation,
                eligible,
            } => out.extend([1, *peer, *incarnation, u8::from(*eligible)]),
            Self::LinkDown { peer, certain } => out.extend([2, *peer, u8::from(*certain)]),
            Self::View {
                from,
                beats,
                tombs,
                claims,
            } => {
                out.extend([3, *from, beats.len() as u8]);
                for (p, i, c, e) in beats {
                    out.extend([*p, *i, *c, u8::from(*e)]);
                }
                out.push(tombs.len() as u8);
                for (p, i, c) in tombs {
                    out.extend([*p, *i, *c]);
                }
                out.push(claims.len() as u8);
                for (p, t) in claims {
                    out.extend([*p, *t]);
                }
            }
            Self::Leave {
                from,
                peer,
                incarnation,
            } => out.extend([4, *from, *peer, *incarnation]),
            Self::Settled => out.push(5),
            Self::LeaderPut(t) => out.extend([6, *t]),
            Self::LocalLeave => out.push(7),
        }
    }
}

/// Time before a tick: 0 to 995 ms in steps of 5 ms for bytes below 200, then 0 to 5.5 s in
/// steps of 100 ms (longer than the suspect timeout: this process was frozen).
fn tick_delay(b: u8) -> std::time::Duration {
    let ms = if b < 200 {
        u64::from(b) * 5
    } else {
        u64::from(b - 200) * 100
    };
    std::time::Duration::from_millis(ms)
}

/// An incarnation number: 0 to 3, or one of the four highest.
fn incarnation(b: u8) -> u64 {
    if b >= 0xfc {
        u64::MAX - u64::from(0xff - b)
    } else {
        u64::from(b % 4)
    }
}

/// A term: 0 to 15, or one of the four highest.
fn term(b: u8) -> u64 {
    if b >= 0xfc {
        u64::MAX - u64::from(0xff - b)
    } else {
        u64::from(b % 16)
    }
}

fn cause(b: u8) -> DeathCause {
    match b % 3 {
        0 => DeathCause::Timeout,
        1 => DeathCause::LinkClosed,
        _ => DeathCause::Left,
    }
}

/// The most steps one input drives.
const MAX_STEPS: usize = 512;

/// What the event stream and earlier steps say; checked against the node after every step.
struct Watch {
    me: PeerId,
    eligible: bool,
    config: Config,
    /// The greatest term number seen so far.
    max_term: u64,
    /// The newest term seen so far.
    newest: Option<Term>,
    /// The newest term shown in the leadership so far.
    shown_term: Option<Term>,
    /// The term this node leads under, as the Elected and Deposed events say.
    my_term: Option<u64>,
    /// This node's incarnation, as the Refuted events say.
    incarnation: u64,
    /// For each peer, the highest incarnation judged dead (PeerDown events).
    dead: BTreeMap<PeerId, u64>,
    left: bool,
    /// Since the start or the last wake from a freeze: when the join grace ends, and whether
    /// discovery said it settled.
    grace_ends: Time,
    settled: bool,
}

impl Watch {
    fn new(node: &Node) -> Self {
        Self {
            me: node.me().peer,
            eligible: node.config().eligible,
            config: node.config().clone(),
            max_term: 0,
            newest: None,
            shown_term: None,
            my_term: None,
            incarnation: 0,
            dead: BTreeMap::new(),
            left: false,
            grace_ends: T0 + node.config().join_grace,
            settled: false,
        }
    }

    /// Checks the node after `step` at `now`.
    fn check(&mut self, node: &mut Node, now: Time, step: &Step) {
        let me = self.me;
        let (frames, events) = drain(node);
        for (_, m) in &frames {
            if let Message::View(v) = m {
                assert_eq!(
                    v.beats[0].peer, me,
                    "a view whose first beat is not the sender's"
                );
            }
        }
        let lead = node.leadership();
        let my_term = node.my_term();
        let ex = node.explain(now);

        // The event stream agrees with the node.
        let mut last_leadership = None;
        for e in events {
            match e {
                Event::Elected { term } => {
                    assert!(!self.left, "elected under {term} after leaving");
                    assert_eq!(
                        self.my_term, None,
                        "elected under {term} without being deposed first"
                    );
                    assert!(
                        term > self.max_term,
                        "new term {term} is not above every term seen before ({})",
                        self.max_term
                    );
                    self.my_term = Some(term);
                }
                Event::Deposed { term } => {
                    assert_eq!(
                        self.my_term,
                        Some(term),
                        "deposed from a term it did not hold"
                    );
                    self.my_term = None;
                }
                Event::Refuted(inc) => {
                    assert_eq!(inc.peer, me, "refuted someone else's incarnation");
                    assert!(
                        inc.number > self.incarnation,
                        "refuted to incarnation {} from {}",
                        inc.number,
                        self.incarnation
                    );
                    self.incarnation = inc.number;
                }
                Event::PeerDown { incarnation, .. } => {
                    assert_ne!(incarnation.peer, me, "judged itself dead");
                    let d = self.dead.entry(incarnation.peer).or_insert(0);
                    *d = (*d).max(incarnation.number);
                }
                Event::PeerUp(inc) => {
                    assert_ne!(inc.peer, me, "saw itself come up");
                    if let Some(d) = self.dead.get(&inc.peer) {
                        assert!(
                            inc.number > *d,
                            "{inc} came up again after being judged dead (up to #{d})"
                        );
                    }
                }
                Event::Leadership(l) => last_leadership = Some(l),
                _ => {}
            }
        }
        if let Some(l) = last_leadership {
            assert_eq!(l, lead, "the last leadership event is not the leadership");
        }
        assert_eq!(
            self.my_term, my_term,
            "the Elected/Deposed events disagree with the node's term"
        );
        assert_eq!(
            self.incarnation,
            node.me().number,
            "the Refuted events disagree with the node's incarnation"
        );

        // Terms never go backwards.
        assert!(
            ex.max_term >= self.max_term,
            "the greatest term seen went backwards"
        );
        self.max_term = ex.max_term;
        assert!(
            ex.newest_term >= self.newest,
            "the newest term seen went backwards"
        );
        self.newest = ex.newest_term;
        if let Some(t) = lead.term_id() {
            assert!(
                Some(t) >= self.shown_term,
                "the leadership's term went backwards"
            );
            assert_eq!(
                Some(t),
                ex.newest_term,
                "a leadership shown under a term that is not the newest"
            );
            self.shown_term = Some(t);
        }

        // An incarnation judged dead is never seen live again.
        for (peer, n) in &self.dead {
            assert!(node.is_dead(peer, *n), "{peer:?}#{n} is no longer dead");
            let status = ex.peers.iter().find(|p| p.peer == *peer);
            let status = status.unwrap_or_else(|| panic!("{peer:?} was forgotten"));
            assert!(
                !status.live || status.incarnation > *n,
                "{peer:?}#{n} was judged dead and is live again"
            );
        }

        if self.left {
            assert_eq!(my_term, None, "leads after leaving");
            assert_ne!(lead.leader, Some(me), "shows itself leader after leaving");
            return;
        }

        // leader = min { live, eligible peers, self included } (self only once past its join
        // grace or settled: until then no leader rather than a higher one).
        let candidates: Vec<PeerId> = ex.peers[1..]
            .iter()
            .filter(|p| p.live && p.eligible)
            .map(|p| p.peer)
            .collect();
        let lowest = candidates.iter().min().copied();
        let me_lowest = self.eligible && lowest.is_none_or(|l| me < l);
        match lead.leader {
            Some(l) if l == me => {
                assert!(
                    me_lowest,
                    "leads although {lowest:?} is live, eligible and lower"
                );
                assert!(my_term.is_some(), "shows itself leader without a term");
            }
            Some(l) => {
                assert_eq!(
                    Some(l),
                    lowest,
                    "the leader is not the lowest live eligible peer"
                );
            }
            None => assert!(
                lowest.is_none() || me_lowest,
                "no leader although {lowest:?} is live and eligible"
            ),
        }
        if let Some(t) = my_term {
            assert_eq!(
                lead,
                Leadership {
                    leader: Some(me),
                    term: Some(t)
                },
                "leads under {t} but shows another leadership"
            );
            assert_eq!(
                t, ex.max_term,
                "leads under a number that is not the greatest"
            );
            assert_eq!(
                Some(Term::new(t, me)),
                ex.newest_term,
                "leads under a term that is not the newest"
            );
            assert!(
                self.settled || now >= self.grace_ends,
                "leads during its join grace"
            );
        }
        if matches!(step, Step::Tick(_)) {
            let expected = if me_lowest {
                ex.me_candidate.then_some(me)
            } else {
                lowest
            };
            assert_eq!(
                lead.leader, expected,
                "after a tick, the leader is not the one expected"
            );
            assert!(
                node.poll_timeout() > now,
                "after a tick, the next tick is already due"
            );
        }
    }
}

/// The liveness and election state machine ([`Node`]'s ticks, links, views, leaves, settling,
/// leader writes) driven by an arbitrary sequence of events involving four fixed peer ids.
///
/// The first byte picks which of the four ids is this node and whether it is eligible; then
/// each step is one opcode byte and its fields (see `Step`): peers are picked among the four,
/// incarnations and terms are small or near `u64::MAX`, a beat's counter is read relative to the
/// highest one sent for that peer so far (bytes above 16 are fresh news, the others old news),
/// and time moves only on ticks. Views and leaves go through the codec as frames would.
///
/// After every step, what `docs/architecture.md` promises is checked: the Elected/Deposed and
/// Refuted events agree with the node's term and incarnation; a new term is above every term
/// seen before, and terms shown never go backwards; an incarnation judged dead is never live
/// again; the leader is the lowest live eligible peer (this node only past its join grace or
/// once settled, never after leaving, never during the grace after waking from a freeze);
/// leader writes succeed only under the current term and are then visible; the node's own frames
/// decode; after a tick the next tick is in the future.
pub fn liveness(data: &[u8]) {
    escaping(|| liveness_inner(data));
}

fn liveness_inner(data: &[u8]) {
    let ids = peer_ids();
    let mut r = Reader { data };
    let first = r.byte();
    let me = ids[usize::from(first) % PEERS];
    let config = Config {
        eligible: first & 0x30 != 0x30,
        ..Config::default()
    };
    let mut node = new_node(me, config, 3);
    let mut watch = Watch::new(&node);
    let mut now = T0;
    let mut high: BTreeMap<PeerId, u64> = BTreeMap::new();
    let pick = |b: u8| ids[usize::from(b) % PEERS];
    for _ in 0..MAX_STEPS {
        let Some(step) = Step::read(&mut r) else {
            break;
        };
        match &step {
            Step::Tick(d) => {
                let d = tick_delay(*d);
                now = now + d;
                if d > watch.config.suspect_timeout {
                    // The process was frozen: it rejoins.
                    watch.grace_ends = now + watch.config.join_grace;
                    watch.settled = false;
                }
                node.handle_tick(now);
            }
            Step::LinkUp {
                peer,
                incarnation: i,
                eligible,
            } => {
                // As the runtime does: the hello arrives as the link's first frame, and one that
                // does not decode or is refused never brings the link up.
                let hello = hello_of(pick(*peer), incarnation(*i), *eligible);
                if let Ok(Message::Hello(hello)) =
                    codec::decode_message(&payload(&Message::Hello(hello)))
                    && node.check_hello(&hello).is_ok()
                {
                    node.handle_link_up(now, &hello);
                }
            }
            Step::LinkDown { peer, certain } => {
                let how = if *certain {
                    LinkDown::Certain
                } else {
                    LinkDown::Hint
                };
                node.handle_link_down(now, pick(*peer), how);
            }
            Step::View {
                from,
                beats,
                tombs,
                claims,
            } => {
                let beats: Vec<GossipBeat> = beats
                    .iter()
                    .map(|(p, i, c, e)| {
                        let peer = pick(*p);
                        let h = high.entry(peer).or_insert(0);
                        let counter = h.saturating_add(u64::from(*c)).saturating_sub(16);
                        *h = (*h).max(counter);
                        GossipBeat {
                            peer,
                            beat: Beat {
                                incarnation: incarnation(*i),
                                counter,
                            },
                            eligible: *e,
                        }
                    })
                    .collect();
                let view = View {
                    beats,
                    tombs: tombs
                        .iter()
                        .map(|(p, i, c)| {
                            let tomb = Tombstone {
                                incarnation: incarnation(*i),
                                cause: cause(*c),
                            };
                            (pick(*p), tomb)
                        })
                        .collect(),
                    claims: claims.iter().map(|(p, t)| (pick(*p), term(*t))).collect(),
                    doc: [0; 8],
                    leader: [0; 8],
                };
                let _ = node.handle_payload(now, pick(*from), &payload(&Message::View(view)));
            }
            Step::Leave {
                from,
                peer,
                incarnation: i,
            } => {
                let inc = Incarnation {
                    peer: pick(*peer),
                    number: incarnation(*i),
                };
                let _ = node.handle_payload(now, pick(*from), &payload(&Message::Leave(inc)));
            }
            Step::Settled => {
                node.handle_settled(now);
                watch.settled = true;
            }
            Step::LeaderPut(t) => leader_put(&mut node, now, *t, watch.left),
            Step::LocalLeave => {
                node.leave(now);
                watch.left = true;
            }
        }
        watch.check(&mut node, now, &step);
    }
}

/// A leader write under a term picked by `b` (the current one, one off, or any small one):
/// it succeeds exactly when that term is the node's current leadership, and is then visible.
fn leader_put(node: &mut Node, now: Time, b: u8, left: bool) {
    let current = node.my_term().unwrap_or(node.explain(now).max_term);
    let term = match b % 4 {
        0 => current,
        1 => current.wrapping_sub(1),
        2 => current.wrapping_add(1),
        _ => u64::from(b / 4),
    };
    let value = i64::from(b);
    match node.leader_put(now, term, "probes", "api:443", Some(&value)) {
        Ok(_) => {
            assert!(!left, "a leader write succeeded after leaving");
            assert_eq!(
                node.my_term(),
                Some(term),
                "a leader write under {term} succeeded without that term"
            );
            let got = node
                .leader_get::<i64>("probes", "api:443")
                .unwrap_or_else(|e| panic!("reading a leader record failed: {e}"));
            let me = node.me().peer;
            assert_eq!(
                got,
                Some((value, Term::new(term, me))),
                "a leader write is not visible"
            );
        }
        Err(WriteError::NotLeader { .. }) => assert!(
            left || node.my_term() != Some(term),
            "a leader write under the current term {term} was refused"
        ),
        Err(e) => panic!("a leader write failed: {e}"),
    }
}

// ---- seeds ----

/// Seed inputs for `target`: realistic inputs (real frames, real sync messages between two
/// replicas, real persisted files, scripted liveness scenarios) as (file name, bytes).
/// `tests/tests/crashers.rs` writes them into `fuzz/corpus/<target>/` when asked to.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "frame_decode" => frame_seeds(),
        "sync_receive" => sync_seeds(),
        "state_load" => state_seeds(),
        "liveness" => liveness_seeds(),
        _ => Vec::new(),
    }
}

/// A real peer answering the [`sync_fixture`]'s node: it led alone before the link (its own
/// term, a leader record), wrote some state, and then received the fixture's frames. Returns
/// the payloads it sent, in order.
fn peer_exchange() -> Vec<Message> {
    let fixture = sync_fixture();
    let mut peer = new_node(fixture.peer, Config::default(), 2);
    peer.handle_settled(T0);
    let written = (|| -> Result<(), WriteError> {
        let me = peer.me().peer;
        peer.put("probes", "db:5432", &"down".to_string(), Scope::Durable)?;
        peer.put("windows", &me.to_string(), &true, Scope::Presence)?;
        peer.add("ws/desired", 3, Scope::Durable)?;
        peer.add("ws/running", 1, Scope::Presence)?;
        let term = peer.my_term().unwrap_or_default();
        peer.leader_put(T0, term, "health", "db:5432", Some(&"slow".to_string()))?;
        Ok(())
    })();
    written.unwrap_or_else(|e| panic!("seed writes: {e}"));
    drain(&mut peer);
    peer.handle_link_up(T0, &fixture.node.hello());
    let mut out: Vec<Message> = drain(&mut peer).0.into_iter().map(|(_, m)| m).collect();
    let from = fixture.node.me().peer;
    for m in &fixture.sent {
        peer.handle_payload(T0, from, &payload(m))
            .unwrap_or_else(|e| panic!("the peer refused the fixture's frame: {e}"));
        out.extend(drain(&mut peer).0.into_iter().map(|(_, m)| m));
    }
    peer.leave(T0);
    out.extend(drain(&mut peer).0.into_iter().map(|(_, m)| m));
    out
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "hello",
        Message::View(_) => "view",
        Message::Leave(_) => "leave",
        Message::Sync(_) => "sync",
        Message::Leader(_) => "leader",
        Message::Peers(_) => "peers",
    }
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let hello = Message::Hello(hello_of(peer_ids()[1], 0, true));
    let peers = Message::Peers(
        peer_ids()
            .iter()
            .enumerate()
            .map(|(i, p)| codec::PeerAddress {
                peer: *p,
                addr: std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 7411)),
            })
            .collect(),
    );
    let messages = std::iter::once(hello)
        .chain(peer_exchange())
        .chain(std::iter::once(peers));
    for (i, m) in messages.enumerate() {
        let frame =
            codec::encode_frame(&m, MAX).unwrap_or_else(|e| panic!("a seed frame encodes: {e}"));
        out.push((format!("{i:02}-{}", kind(&m)), frame));
    }
    out
}

fn sync_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, m) in peer_exchange().iter().enumerate() {
        out.push((format!("{i:02}-{}-payload", kind(m)), payload(m)));
        if let Message::Sync(bytes) = m {
            out.push((format!("{i:02}-sync-message"), bytes.clone()));
        }
    }
    out.extend(programs());
    out
}

/// Programs of hostile changes (see `hostile_sync`): a record overwritten under the peer's
/// actor, counter entries, a term recorded by another leader, a nested object where a record
/// should be, a change encoded directly from an operation.
fn programs() -> Vec<(String, Vec<u8>)> {
    [
        ("program-record", vec![2, 0, 0, 0, 6, 1, 10, 5, 9, 9, 0, 7]),
        (
            "program-counters",
            vec![2, 0, 0, 0, 3, 2, 12, 0, 5, 0, 2, 13, 7, 0, 1, 7],
        ),
        ("program-term", vec![2, 0, 0, 0, 0, 4, 9, 3, 0, 9, 7]),
        (
            "program-nested",
            vec![2, 0, 0, 0, 1, 1, 14, 0, 1, 5, 5, 1, 4, 6, 0, 2, 0, 1, 7],
        ),
        (
            "program-raw",
            vec![
                2, 0, 0, 3, 2, 0, 0, 0, 1, 1, 0, 0, 2, 10, 5, 5, 9, 0, 0, 0, 0, 0,
            ],
        ),
    ]
    .into_iter()
    .map(|(name, program)| (name.to_string(), program))
    .collect()
}

/// Runs `rounds` of writes on a node and returns every persist output in order.
fn persisted(node: &mut Node, rounds: usize) -> Vec<Persist> {
    let mut out = Vec::new();
    for i in 0..rounds {
        let written = (|| -> Result<(), WriteError> {
            node.put(
                "probes",
                &format!("ep{i}"),
                &format!("up {i}"),
                Scope::Durable,
            )?;
            node.add("ws/desired", 1, Scope::Durable)?;
            node.put("config", "limits", &limits(), Scope::Durable)?;
            Ok(())
        })();
        written.unwrap_or_else(|e| panic!("seed writes: {e}"));
        while let Some(p) = node.poll_persist() {
            match &p {
                Persist::Append { seq, .. } | Persist::Snapshot { seq, .. } => node.persisted(*seq),
            }
            out.push(p);
        }
    }
    out
}

fn bytes_of(p: &Persist) -> &[u8] {
    p.bytes()
}

fn state_seeds() -> Vec<(String, Vec<u8>)> {
    let [a, b, ..] = peer_ids();
    // A file of appends, as the store writes them.
    let mut node = new_node(a, Config::default(), 1);
    node.handle_settled(T0);
    let appends: Vec<u8> = persisted(&mut node, 3)
        .iter()
        .flat_map(bytes_of)
        .copied()
        .collect();
    // A snapshot (compaction), then more appends after it.
    let compact = Config {
        compact_every: 2,
        ..Config::default()
    };
    let mut other = new_node(b, compact, 2);
    let mut file = Vec::new();
    for p in persisted(&mut other, 4) {
        if matches!(p, Persist::Snapshot { .. }) {
            file.clear();
        }
        file.extend_from_slice(bytes_of(&p));
    }
    // Both peers' changes in one document.
    let mut both = new_node(b, Config::default(), 4);
    both.load(&appends)
        .unwrap_or_else(|e| panic!("the seed file loads: {e}"));
    both.load(&file)
        .unwrap_or_else(|e| panic!("the seed file loads: {e}"));
    let merged = both.replica().save();
    let mut truncated = appends.clone();
    truncated.truncate(appends.len() * 3 / 4);
    let mut flipped = merged.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    vec![
        ("appends".into(), appends),
        ("snapshot-then-appends".into(), file),
        ("two-peers-snapshot".into(), merged),
        ("appends-truncated".into(), truncated),
        ("snapshot-flipped-byte".into(), flipped),
        ("not-automerge".into(), b"not an automerge file".to_vec()),
    ]
    .into_iter()
    .chain(programs())
    .collect()
}

fn script(me: u8, steps: &[Step]) -> Vec<u8> {
    let mut out = vec![me];
    for s in steps {
        s.write(&mut out);
    }
    out
}

fn liveness_seeds() -> Vec<(String, Vec<u8>)> {
    let view = |from: u8, beats: &[(u8, u8)]| Step::View {
        from,
        beats: beats.iter().map(|(p, i)| (*p, *i, 20, true)).collect(),
        tombs: vec![],
        claims: vec![],
    };
    let up = |peer| Step::LinkUp {
        peer,
        incarnation: 0,
        eligible: true,
    };
    let heartbeat = |me: u8| {
        let others: Vec<u8> = (0..PEERS as u8).filter(|p| *p != me).collect();
        let mut steps = vec![Step::Tick(40)];
        for p in &others {
            steps.push(view(
                *p,
                &others.iter().map(|q| (*q, 0)).collect::<Vec<_>>(),
            ));
        }
        steps
    };
    let mut seeds = Vec::new();
    // Three peers link; this one (the second lowest) hears them, settles, follows peer 0; peer 0
    // dies by a closed local socket and this one takes over and writes as leader.
    let mut s = vec![up(0), up(2), up(3), Step::Settled];
    for _ in 0..4 {
        s.extend(heartbeat(1));
    }
    s.extend([
        Step::LinkDown {
            peer: 0,
            certain: true,
        },
        Step::Tick(10),
        Step::LeaderPut(0),
    ]);
    seeds.push(("failover-certain", script(1, &s)));
    // The lowest peer, alone past its join grace, leads; a frozen second ends its leadership;
    // its write under the old term is refused; it leads again after the grace.
    let s = vec![
        Step::Tick(130),
        Step::LeaderPut(0),
        Step::Tick(230),
        Step::LeaderPut(0),
        Step::Tick(130),
        Step::Tick(10),
        Step::LeaderPut(0),
    ];
    seeds.push(("freeze", script(0, &s)));
    // Peers go silent: judged dead after the suspect timeout; a hint then silence.
    let mut s = vec![up(0), up(1), Step::Settled];
    s.extend(heartbeat(3));
    s.extend([
        Step::LinkDown {
            peer: 1,
            certain: false,
        },
        Step::Tick(100),
        Step::Tick(100),
        Step::Tick(100),
        Step::Tick(100),
    ]);
    seeds.push(("silence-and-hint", script(3, &s)));
    // Judged dead by gossip: refutes with a new incarnation; late old news of a dead peer.
    let mut s = vec![up(1), up(2), Step::Settled];
    s.extend(heartbeat(0));
    s.push(Step::View {
        from: 1,
        beats: vec![(1, 0, 20, true)],
        tombs: vec![(0, 0, 0), (2, 0, 1)],
        claims: vec![(1, 5)],
    });
    s.push(view(1, &[(1, 0), (2, 0)]));
    s.extend(heartbeat(0));
    seeds.push(("refute-and-late-news", script(0, &s)));
    // A partition heals: a higher peer claims a newer term; this lower one starts a newer one.
    let mut s = vec![Step::Settled, Step::Tick(20), up(2)];
    s.push(Step::View {
        from: 2,
        beats: vec![(2, 0, 30, true)],
        tombs: vec![],
        claims: vec![(2, 7)],
    });
    s.extend(heartbeat(0));
    s.push(Step::LeaderPut(0));
    seeds.push(("partition-heal", script(0, &s)));
    // Graceful leaves: a peer announces one; then this node leaves.
    let mut s = vec![up(0), up(2), Step::Settled];
    s.extend(heartbeat(1));
    s.extend([
        Step::Leave {
            from: 0,
            peer: 0,
            incarnation: 0,
        },
        Step::Tick(10),
        Step::LeaderPut(0),
        Step::LocalLeave,
    ]);
    s.extend(heartbeat(1));
    seeds.push(("leaves", script(1, &s)));
    // Not eligible: never leads.
    let mut s = vec![up(1), Step::Settled];
    s.extend(heartbeat(0));
    s.push(Step::LinkDown {
        peer: 1,
        certain: true,
    });
    s.extend(heartbeat(0));
    seeds.push(("ineligible", script(0x30, &s)));
    seeds.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(target: &str, name: &str) -> Vec<u8> {
        seeds(target)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no seed {name}"))
    }

    /// The seeds reach deep: real sync messages and every hostile program carry changes the
    /// node accepts.
    #[test]
    fn sync_seeds_carry_accepted_changes() {
        let SyncFixture { mut node, peer, .. } = sync_fixture();
        let before = node.heads();
        // The peer's last sync message: the one that carries its changes.
        let (_, last_sync) = seeds("sync_receive")
            .into_iter()
            .rfind(|(n, _)| n.ends_with("-sync-payload"))
            .expect("a sync payload seed");
        node.handle_payload(T0, peer, &last_sync).expect("accepted");
        assert_ne!(
            node.heads(),
            before,
            "the real sync message carried no change"
        );
        for name in [
            "program-record",
            "program-counters",
            "program-term",
            "program-nested",
            "program-raw",
        ] {
            let SyncFixture { mut node, peer, .. } = sync_fixture();
            let base = node.replica().doc().clone();
            let before = node.heads();
            let bytes = hostile_sync(&base, &seed("sync_receive", name)).expect("built");
            node.handle_payload(T0, peer, &payload(&Message::Sync(bytes)))
                .unwrap_or_else(|e| panic!("{name} refused: {e}"));
            assert_ne!(node.heads(), before, "{name} changed nothing");
        }
    }

    #[test]
    fn state_seeds_load() {
        for name in ["appends", "snapshot-then-appends", "two-peers-snapshot"] {
            let mut node = new_node(peer_ids()[2], Config::default(), 5);
            let report = node.load(&seed("state_load", name)).expect("loads");
            assert!(report.complete && report.changed, "{name}: {report:?}");
        }
        let mut node = new_node(peer_ids()[2], Config::default(), 5);
        let report = node
            .load(&seed("state_load", "appends-truncated"))
            .expect("salvages");
        assert!(!report.complete && report.changed, "{report:?}");
        // The programs make files of changes that load whole.
        let base = new_node(peer_ids()[1], Config::default(), 1)
            .replica()
            .doc()
            .clone();
        for (name, program) in programs() {
            let (chunks, _) = hostile_changes(&base, &program).expect("made");
            let mut node = new_node(peer_ids()[2], Config::default(), 5);
            let report = node.load(&chunks.concat()).expect("loads");
            assert!(report.complete && report.changed, "{name}: {report:?}");
        }
    }

    #[test]
    fn steps_round_trip() {
        for (_, bytes) in seeds("liveness") {
            let mut r = Reader { data: &bytes[1..] };
            let mut again = vec![bytes[0]];
            while let Some(step) = Step::read(&mut r) {
                step.write(&mut again);
            }
            assert_eq!(again, bytes);
        }
    }
}

//! The `sync_receive` target: a linked peer's frames into a live document.

use std::collections::BTreeMap;

use super::common::{Snapshot, T0, assert_usable, drain, frame, hello_of, new_node, peer_ids};
use super::escaping;
use super::hostile::hostile_sync;
use crate::codec::{self, Message};
use crate::{Config, Node, PeerId, ReceiveError, Scope, Value, WriteError};

/// The node under test in [`sync_receive`]: some state, a leadership term recorded in its
/// document, and a link up with `peer` (hello exchanged, its first view and sync message sent).
pub(super) struct SyncFixture {
    pub(super) node: Node,
    pub(super) peer: PeerId,
    /// What the node sent `peer` when the link came up.
    pub(super) sent: Vec<Message>,
}

pub(super) fn sync_fixture() -> SyncFixture {
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

pub(super) fn limits() -> Value {
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

/// Feeds `frame` from `from` and checks the outcome against `before` (the node's state
/// before): a refused frame leaves everything observable as it was; an accepted one leaves a
/// node whose every read and output works. Returns the node's state after.
fn receive_checked(
    node: &mut Node,
    from: PeerId,
    frame: &[u8],
    what: &str,
    before: Snapshot,
    deferred: Deferred,
) -> Snapshot {
    let result = if let Deferred::Yes { twice } = deferred {
        receive_deferred(node, from, frame, twice)
    } else {
        node.handle_frame(T0, from, frame)
    };
    drain(node);
    let after = Snapshot::of(node, T0);
    if let Err(e) = result {
        before.assert_same(&after, &format_args!("refused {what} ({e})"));
    }
    after
}

/// How [`receive_checked`] hands a frame over.
#[derive(Clone, Copy)]
enum Deferred {
    /// [`Node::handle_frame`].
    No,
    /// As the runtime does (see [`receive_deferred`]).
    Yes {
        /// The frame arrives twice while the job waits to start, and joins it the second
        /// time.
        twice: bool,
    },
}

/// A frame handed over as statemesh's runtime does: [`Node::handle_frame_deferred`] (a small
/// sync message applied in place, a larger one returned as a job), the job run and finished,
/// again while it comes back for local changes, then the standby's catch-up. With `twice`, the
/// same frame arrives again while the job waits to start and joins it
/// ([`Node::join_frame`]: two messages in one apply, the second one's changes held already);
/// a job of the two that fails is retried one message at a time ([`Node::retry_job`]), as the
/// runtime does, and the first error is the outcome.
fn receive_deferred(
    node: &mut Node,
    from: PeerId,
    frame: &[u8],
    twice: bool,
) -> Result<(), ReceiveError> {
    let mut job = node.handle_frame_deferred(T0, from, frame)?;
    if twice && let Some(j) = job.as_mut() {
        node.join_frame(T0, j, from, frame)?;
    }
    let mut outcome = Ok(());
    loop {
        while let Some(mut j) = job.take() {
            j.run();
            match node.finish_sync(T0, j) {
                Ok(again) => job = again,
                Err(e) => {
                    outcome = outcome.and(Err(e));
                    break;
                }
            }
        }
        job = node.retry_job();
        if job.is_none() {
            break;
        }
    }
    node.catch_up_standby();
    outcome
}

/// The whole path a linked peer's bytes take into a live document
/// ([`Node::handle_frame`], or for inputs of odd length the runtime's
/// [`Node::handle_frame_deferred`], for one length in two of those with the frame joining its
/// own job a second time: see [`receive_deferred`]), on a node with state and a link up with
/// that peer. The
/// input is fed four ways, in turn, to the same node:
///
/// 0. as a whole frame, header included (the header's checks: most inputs stop there);
/// 1. as a raw payload (any message kind) in a frame with a matching header;
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
    let deferred = match data.len() % 4 {
        1 => Deferred::Yes { twice: false },
        3 => Deferred::Yes { twice: true },
        _ => Deferred::No,
    };
    let base = node.replica().doc().clone();
    let state = Snapshot::of(&mut node, T0);
    let state = receive_checked(&mut node, peer, data, "raw frame", state, deferred);
    let framed = codec::frame_raw(data);
    let state = receive_checked(&mut node, peer, &framed, "raw payload", state, deferred);
    let wrapped = frame(&Message::Sync(data.to_vec()));
    let state = receive_checked(&mut node, peer, &wrapped, "sync message", state, deferred);
    if let Some(bytes) = hostile_sync(&base, data) {
        let hostile = frame(&Message::Sync(bytes));
        receive_checked(
            &mut node,
            peer,
            &hostile,
            "hostile changes",
            state,
            deferred,
        );
    }
    assert_usable(&mut node);
}

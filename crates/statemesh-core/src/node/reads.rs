//! Reads: the application's entries (records, counters, leader records), the leadership, and
//! what the node knows of its peers and of itself.

use automerge::ChangeHash;
use autosurgeon::Hydrate;

use super::{Explanation, Node, Stats};
use crate::election::{Leadership, Term};
use crate::leader_records::LeaderStore;
use crate::replica::{ReadError, Replica, heads_digest};
use crate::{PeerId, Time, Value};

/// Who is live, copied out of the heart, so that a read of the document does not hold the
/// heart's lock: the pulse takes that lock for every beat and view, and a read costs what the
/// channel holds (a window listing a channel of about 120,000 keys held it 0.9-1.2 s, its
/// beats waited, and its peers judged it dead). Copying costs what the peers number.
#[derive(Clone, Debug)]
pub(super) struct LiveNow {
    me: PeerId,
    peers: std::collections::BTreeSet<PeerId>,
}

impl LiveNow {
    /// Who `heart` holds live.
    pub(super) fn of(heart: &super::Heart) -> Self {
        Self {
            me: heart.live.me().peer,
            peers: heart.live.live_peers().collect(),
        }
    }

    /// `me` alone live.
    pub(super) fn alone(me: PeerId) -> Self {
        Self {
            me,
            peers: Default::default(),
        }
    }

    fn is_live(&self, peer: &PeerId) -> bool {
        *peer == self.me || self.peers.contains(peer)
    }
}

impl Node {
    /// Who is live now (see [`LiveNow`]): the heart's lock held for the copy only.
    ///
    /// While another thread holds the heart (the pulse, which may be preempted holding it),
    /// the copy the node made when it last took in a change of a peer's liveness is used
    /// instead of waiting (every such change leaves the node a `Presence` note, taken with the
    /// events that tell the application of it): never older than what the application was
    /// told.
    fn live_now(&self) -> LiveNow {
        match self.heart.try_lock() {
            Some(heart) => LiveNow::of(&heart),
            None => self.live_seen.borrow().clone(),
        }
    }

    /// Reads record `key` of `channel`. Reads of records (this, [`keys`](Self::keys),
    /// [`channels`](Self::channels)) take the node mutably: they make the new records of
    /// local writes left open first, so that they see every write made before them.
    pub fn get<T: Hydrate>(&mut self, channel: &str, key: &str) -> Result<Option<T>, ReadError> {
        let live = self.live_now();
        self.replica.get(channel, key, |p| live.is_live(p))
    }

    /// The visible keys of `channel`.
    pub fn keys(&mut self, channel: &str) -> Vec<String> {
        let live = self.live_now();
        self.replica.keys(channel, |p| live.is_live(p))
    }

    /// Channels holding records.
    pub fn channels(&mut self) -> Vec<String> {
        self.replica.channels()
    }

    /// The value of counter `name` (presence-scoped entries of dead writers left out).
    pub fn counter(&self, name: &str) -> i64 {
        let live = self.live_now();
        self.replica.counter(name, |p| live.is_live(p))
    }

    /// Names of all counters.
    pub fn counter_names(&self) -> Vec<String> {
        self.replica.counter_names()
    }

    /// Reads leader record `key` of `channel`, with the term it was written under: present only
    /// if written by a live leader under the newest known term.
    pub fn leader_get<T: Hydrate>(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<Option<(T, Term)>, ReadError> {
        let (live, newest) = (self.live_now(), self.heart().election.newest());
        let Some(r) = self
            .leader
            .visible(channel, key, newest, |p| live.is_live(p))
        else {
            return Ok(None);
        };
        let Some(tokens) = &r.value else {
            return Ok(None);
        };
        let value = Value::from_tokens(tokens).map_err(|_| {
            ReadError::Hydrate(autosurgeon::HydrateError::unexpected(
                "a value",
                "a malformed value".into(),
            ))
        })?;
        Ok(Some((
            self.scratch.borrow_mut().hydrate(&value)?,
            crate::leader_records::term_of(r),
        )))
    }

    /// The visible keys of leader channel `channel`.
    pub fn leader_keys(&self, channel: &str) -> Vec<String> {
        let (live, newest) = (self.live_now(), self.heart().election.newest());
        self.leader.keys(channel, newest, |p| live.is_live(p))
    }

    /// Leader channels holding records.
    pub fn leader_channels(&self) -> Vec<String> {
        self.leader.channels()
    }

    /// The current leadership.
    pub fn leadership(&self) -> Leadership {
        self.heart().election.current()
    }

    /// The leadership and this peer's own term, read together and versioned (see
    /// [`Heart::leadership`](super::Heart::leadership)).
    pub fn leadership_versioned(&self) -> (u64, Leadership, Option<u64>) {
        self.heart().leadership()
    }

    /// What a runtime reads from the heart after each turn, in one look, if nobody holds the
    /// heart (else `None`: its holder, the pulse, publishes the leadership after its turn):
    /// the versioned leadership (see [`leadership_versioned`](Self::leadership_versioned)),
    /// whether this node is past joining at `now` (see [`joined`](Self::joined)), and how many
    /// of `peers` are live.
    pub fn try_glance<'a>(
        &self,
        now: Time,
        peers: impl IntoIterator<Item = &'a PeerId>,
    ) -> Option<Glance> {
        let mut heart = self.heart.try_lock()?;
        Some(Glance {
            leadership: heart.leadership(),
            joined: heart.joined(now),
            live: heart
                .live
                .live_among(peers.into_iter().map(|p| (p, ())))
                .count(),
        })
    }

    /// The number of the term under which this peer leads, if it does.
    pub fn my_term(&self) -> Option<u64> {
        self.heart().election.my_term()
    }

    /// The term under which this peer leads, if it does: its number, led by this peer.
    pub fn my_term_id(&self) -> Option<Term> {
        Some(Term::new(self.my_term()?, self.me))
    }

    /// The newest term this peer knows of (its own included).
    pub fn newest_term(&self) -> Option<Term> {
        self.heart().election.newest()
    }

    /// Whether `peer`'s highest known incarnation is live.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.heart().live.is_live(peer)
    }

    /// Whether incarnation `number` of `peer` was judged dead.
    pub fn is_dead(&self, peer: &PeerId, number: u64) -> bool {
        self.heart().live.is_dead(peer, number)
    }

    /// Live peers other than this one.
    pub fn live_peers(&self) -> Vec<PeerId> {
        self.heart().live.live_peers().collect()
    }

    /// Peers with a link up.
    pub fn linked_peers(&self) -> Vec<PeerId> {
        self.links.keys().copied().collect()
    }

    /// Whether this node is past joining: discovery settled, or its join grace is over. The
    /// peers it knows by then are the ones that were there when it started.
    pub fn joined(&self, now: Time) -> bool {
        self.heart().joined(now)
    }

    /// Whether every linked peer's last view showed the same document and leader records as
    /// this node holds (true with no links), and no local write waits in the open change
    /// (see [`transact`](Self::transact)): the peers' documents cannot hold those yet.
    pub fn in_sync(&self) -> bool {
        if !self.open_writes.is_empty() && !self.links.is_empty() {
            return false;
        }
        let doc = heads_digest(&self.replica.heads());
        let leader = self.leader.digest();
        self.links
            .values()
            .all(|l| l.their_doc == Some(doc) && l.their_leader == Some(leader))
    }

    /// Why this peer leads or not, at local time `now`.
    pub fn explain(&self, now: Time) -> Explanation {
        let heart = self.heart();
        Explanation {
            me: heart.live.me(),
            leadership: heart.election.current(),
            max_term: heart.election.max_term(),
            newest_term: heart.election.newest(),
            me_candidate: heart.me_candidate(now),
            peers: heart.live.explain(now),
        }
    }

    /// The document heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.replica.heads()
    }

    /// The replicated document (read-only).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The replicated document, for the tests' reads of records (which may make the new
    /// records of local writes left open).
    #[cfg(test)]
    pub(crate) fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// The leader record store (read-only).
    pub fn leader_store(&self) -> &LeaderStore {
        &self.leader
    }

    /// Counters of what this node did.
    pub fn stats(&self) -> Stats {
        let h = self.heart().stats;
        let mut s = self.stats;
        s.frames_in += h.frames_in;
        s.bytes_in += h.bytes_in;
        s.frames_out += h.frames_out;
        s.bytes_out += h.bytes_out;
        s.decode_errors += h.decode_errors;
        s.leadership_changes += h.leadership_changes;
        s.freezes += h.freezes;
        s.suspicions_refuted += h.suspicions_refuted;
        s
    }
}

/// Converts between typed values and [`Value`] through autosurgeon, using a scratch document
/// whose transactions are always rolled back (so it never grows).
#[derive(Debug)]
pub(super) struct Scratch(automerge::Automerge);

impl Default for Scratch {
    fn default() -> Self {
        Self(automerge::Automerge::new().with_actor(automerge::ActorId::from([0u8; 16].as_slice())))
    }
}

impl Scratch {
    fn hydrate<T: Hydrate>(&mut self, value: &Value) -> Result<T, ReadError> {
        let mut tx = self.0.transaction();
        let out = autosurgeon::reconcile_prop(&mut tx, automerge::ROOT, "v", value)
            .map_err(|e| {
                ReadError::Hydrate(autosurgeon::HydrateError::unexpected(
                    "a storable value",
                    e.to_string(),
                ))
            })
            .and_then(|()| Ok(autosurgeon::hydrate_prop(&tx, automerge::ROOT, "v")?));
        tx.rollback();
        out
    }
}

/// See [`Node::try_glance`].
#[derive(Clone, Debug)]
pub struct Glance {
    /// The leadership and this peer's own term, versioned.
    pub leadership: (u64, Leadership, Option<u64>),
    /// Whether this node is past joining.
    pub joined: bool,
    /// How many of the peers asked about are live.
    pub live: usize,
}

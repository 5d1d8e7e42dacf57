//! Which addresses to dial, when, and from which socket: a pure unit (time and reports in, dial
//! decisions out), so that every rule below is tested without a network.
//!
//! # The rules
//!
//! - **Who dials.** Of two peers that know each other's ids, the lower id dials (so both rarely
//!   dial at once; should they, the driver's duplicate tie-break keeps one link); the higher id
//!   dials too once it has known the address for [`FALLBACK_AFTER`] without a link (the lower
//!   side may not reach it: a one-way firewall, or an address it parked). Addresses known
//!   without an id, or whose holder may have changed — static peers and addresses learned from
//!   links (see *Peer exchange* in `docs/architecture.md`) — are dialled by either side at
//!   once. A peer is dialled at one address at a time, and not at all while linked.
//! - **Trust.** Addresses from local sockets and the in-process registry come with a peer that
//!   proved the mesh secret (or is this process's own): they are dialled at once, from the main
//!   endpoint. Anything else (mDNS, static peers, learned addresses, custom discoveries) may
//!   name a host that does not exist; with probing on (LAN mode) such an address is first
//!   *probed*, each probe from a socket of its own ([`Via::Probe`]), and only an address where a
//!   peer just proved the mesh secret is dialled from the main endpoint (for [`PROVEN_FOR`]).
//!   Loopback addresses need no probe.
//! - **Bounds on probes.** At most [`MAX_PROBES`] in flight and [`PROBE_RATE`] per second
//!   (bursts of [`MAX_PROBES`]); addresses that proved themselves before come first, then
//!   fresh candidates (newest report first), then retries (fewest failures first).
//! - **Ageing.** An address offered only by an unproven discovery (mDNS) that never proved
//!   itself is retried [`UNPROVEN_FAILURES`] times ([`UNPROVEN_BACKOFF`] apart), then *parked*:
//!   retried last, [`PARKED_BACKOFF`] after its last failure, doubling up to [`PARKED_MAX`],
//!   until discovery withdraws it (mDNS expires a record whose announcer vanished). At most
//!   [`MAX_UNPROVEN`] such addresses are kept: beyond, the worst (most failures, then least
//!   recently reported) are forgotten. A learned address is forgotten once it has not answered
//!   for [`LEARNED_RETRY`]. Static peers are dialled for ever.
//! - **Backoff.** After a failure an address waits [`BACKOFF_MIN`], doubling up to
//!   [`BACKOFF_MAX`], times a jitter in 0.5..1.5 (never-proven mDNS addresses: above).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statemesh_core::PeerId;

/// Most probes in flight at once.
pub(crate) const MAX_PROBES: usize = 8;
/// Most probes started per second (in bursts of at most [`MAX_PROBES`]).
pub(crate) const PROBE_RATE: u32 = 10;
/// How long a successful probe lets the main endpoint dial its address.
pub(crate) const PROVEN_FOR: Duration = Duration::from_secs(2);
/// Failed probes after which an address that only an unproven discovery offers is parked.
pub(crate) const UNPROVEN_FAILURES: u32 = 3;
/// First wait of a parked address.
pub(crate) const PARKED_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait of a parked address.
pub(crate) const PARKED_MAX: Duration = Duration::from_secs(300);
/// How long the higher id waits for the lower to dial before dialling itself.
pub(crate) const FALLBACK_AFTER: Duration = Duration::from_secs(1);
/// Most never-proven addresses from unproven discoveries kept at once.
pub(crate) const MAX_UNPROVEN: usize = 256;
/// How long a learned address is redialled after it stopped answering.
pub(crate) const LEARNED_RETRY: Duration = Duration::from_secs(60);
/// First wait after a failed dial.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between dials of one address.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Wait between the first probes of a never-proven mDNS address.
pub(crate) const UNPROVEN_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) use statemesh_net::discovery::Provenance as Trust;

/// Who told the dialler about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    /// The discovery of this index.
    Discovery(usize),
    /// A link: the address of one of this window's links, or one a linked peer shared.
    Learned,
}

/// Which endpoint a dial leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Via {
    /// The main endpoint, which carries the links: a link is dialled.
    Main,
    /// A probe from a socket of its own: the address is only proven (see
    /// `statemesh_net::quic::Endpoint::probe`).
    Probe,
}

/// A dial to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dial {
    /// Where.
    pub(crate) addr: SocketAddr,
    /// From which endpoint.
    pub(crate) via: Via,
}

/// Counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DialerCounts {
    /// Probes started.
    pub(crate) probes: u64,
    /// Probes that failed.
    pub(crate) probe_failures: u64,
    /// Addresses forgotten by ageing or eviction.
    pub(crate) forgotten: u64,
}

#[derive(Debug)]
struct Target {
    peer: Option<PeerId>,
    sources: BTreeSet<Source>,
    /// Reported by a static discovery: dialled for ever.
    fixed: bool,
    /// Reported by a discovery whose peers are proven.
    trusted: bool,
    failures: u32,
    backoff: Duration,
    next: Instant,
    dialing: Option<Via>,
    reported: Instant,
    /// Since when its current peer has been known here (for [`FALLBACK_AFTER`]).
    known_since: Instant,
    /// A probe proved this address until then.
    proven_until: Option<Instant>,
    /// Some peer proved the mesh secret here once.
    ever_proven: bool,
    /// Since when it has failed without a success in between.
    failing_since: Option<Instant>,
}

impl Target {
    fn new(now: Instant) -> Self {
        Self {
            peer: None,
            sources: BTreeSet::new(),
            fixed: false,
            trusted: false,
            failures: 0,
            backoff: BACKOFF_MIN,
            next: now,
            dialing: None,
            reported: now,
            known_since: now,
            proven_until: None,
            ever_proven: false,
            failing_since: None,
        }
    }

    /// Dialled by either side whatever the ids: static or learned, so the peer at it may have
    /// changed.
    fn by_address(&self) -> bool {
        self.fixed || self.sources.contains(&Source::Learned)
    }

    /// Known only from unproven discoveries, and never proven.
    fn unproven(&self) -> bool {
        !self.fixed
            && !self.trusted
            && !self.ever_proven
            && !self.sources.contains(&Source::Learned)
    }
}

/// The dialler's state (see the module docs).
#[derive(Debug)]
pub(crate) struct Dialer {
    me: PeerId,
    /// Probe addresses that need it before dialling them from the main endpoint (LAN mode).
    probing: bool,
    targets: BTreeMap<SocketAddr, Target>,
    links: BTreeSet<PeerId>,
    trust: Vec<Trust>,
    tokens: f64,
    refilled: Instant,
    rng: ChaCha8Rng,
    counts: DialerCounts,
    /// [`Self::next_wake`]'s last answer, until a report or a poll changes the targets (the
    /// runtime asks every turn; at 64 windows the walk was 2 % of the busy CPU during writes).
    wake: Option<Option<Instant>>,
}

impl Dialer {
    /// A dialler for peer `me`; `probing` in LAN mode; `seed` for the backoff jitter.
    pub(crate) fn new(me: PeerId, probing: bool, now: Instant, seed: u64) -> Self {
        Self {
            me,
            probing,
            targets: BTreeMap::new(),
            links: BTreeSet::new(),
            trust: Vec::new(),
            tokens: MAX_PROBES as f64,
            refilled: now,
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: DialerCounts::default(),
            wake: None,
        }
    }

    /// Declares discovery `index`'s trust (indices in order from 0).
    pub(crate) fn add_discovery(&mut self, trust: Trust) -> usize {
        self.wake = None;
        self.trust.push(trust);
        self.trust.len() - 1
    }

    /// Counters so far.
    pub(crate) fn counts(&self) -> DialerCounts {
        self.counts
    }

    /// Addresses known now.
    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }

    /// Peers known at some address (for settling).
    pub(crate) fn known_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.targets.values().filter_map(|t| t.peer)
    }

    /// Discovery `index` found `peer` (or an unknown peer) at `addr`.
    pub(crate) fn found(
        &mut self,
        now: Instant,
        index: usize,
        peer: Option<PeerId>,
        addr: SocketAddr,
    ) {
        self.wake = None;
        let trust = self.trust.get(index).copied().unwrap_or(Trust::Unproven);
        let target = self.targets.entry(addr).or_insert_with(|| Target::new(now));
        target.sources.insert(Source::Discovery(index));
        target.reported = now;
        match trust {
            Trust::Proven => target.trusted = true,
            Trust::Static => target.fixed = true,
            _ => {}
        }
        Self::set_peer(target, peer, now);
        self.bound_unproven();
    }

    /// A linked peer shared (or a link showed) that `peer` can be reached at `addr`.
    pub(crate) fn learned(&mut self, now: Instant, peer: PeerId, addr: SocketAddr) {
        self.wake = None;
        if peer == self.me {
            return;
        }
        let target = self.targets.entry(addr).or_insert_with(|| Target::new(now));
        target.sources.insert(Source::Learned);
        target.reported = now;
        Self::set_peer(target, Some(peer), now);
    }

    /// Another peer answers at an address: dial it afresh.
    fn set_peer(target: &mut Target, peer: Option<PeerId>, now: Instant) {
        if let Some(p) = peer
            && target.peer != Some(p)
        {
            if target.peer.is_some() {
                target.failures = 0;
                target.backoff = BACKOFF_MIN;
                target.next = now;
                target.failing_since = None;
            }
            target.peer = Some(p);
            target.known_since = now;
        }
    }

    /// Discovery `index` withdrew `peer`: forget the addresses only it knew for the peer.
    pub(crate) fn gone(&mut self, index: usize, peer: PeerId) {
        self.wake = None;
        self.targets.retain(|_, t| {
            if t.peer == Some(peer) {
                t.sources.remove(&Source::Discovery(index));
            }
            !t.sources.is_empty()
        });
    }

    /// `peer` left or is certainly dead and will not come back at its addresses (it was not
    /// eligible: a query or an observer): forget every address it was known at but static ones.
    pub(crate) fn forget_peer(&mut self, peer: PeerId) {
        self.wake = None;
        self.targets.retain(|_, t| t.peer != Some(peer) || t.fixed);
    }

    /// A link to `peer` came up, at `remote`.
    pub(crate) fn linked(&mut self, peer: PeerId, remote: SocketAddr) {
        self.wake = None;
        self.links.insert(peer);
        if let Some(t) = self.targets.get_mut(&remote) {
            t.dialing = None;
            t.peer = Some(peer);
            Self::succeeded(t);
        }
    }

    /// The link to `peer` went down; its addresses are redialled as their rules say.
    pub(crate) fn unlinked(&mut self, now: Instant, peer: PeerId) {
        self.wake = None;
        self.links.remove(&peer);
        for t in self.targets.values_mut().filter(|t| t.peer == Some(peer)) {
            t.next = t
                .next
                .max(now + BACKOFF_MIN.mul_f64(self.rng.random_range(0.5..1.5)));
        }
    }

    /// A probe of `addr` found `peer` there, proving the mesh secret.
    pub(crate) fn probed(&mut self, now: Instant, addr: SocketAddr, peer: PeerId) {
        self.wake = None;
        if let Some(t) = self.targets.get_mut(&addr) {
            t.dialing = None;
            Self::set_peer(t, Some(peer), now);
            t.peer = Some(peer);
            t.proven_until = Some(now + PROVEN_FOR);
            t.next = now;
            Self::succeeded(t);
        }
    }

    fn succeeded(t: &mut Target) {
        t.ever_proven = true;
        t.failures = 0;
        t.backoff = BACKOFF_MIN;
        t.failing_since = None;
    }

    /// A dial or probe of `addr` failed; returns which it was (`None`: nothing was in flight
    /// there, e.g. the address was forgotten meanwhile).
    pub(crate) fn failed(&mut self, now: Instant, addr: SocketAddr) -> Option<Via> {
        self.wake = None;
        let t = self.targets.get_mut(&addr)?;
        let via = t.dialing.take();
        if via == Some(Via::Probe) {
            self.counts.probe_failures += 1;
        }
        t.proven_until = None;
        t.failures += 1;
        t.failing_since.get_or_insert(now);
        let forget = !t.fixed
            && t.sources.iter().all(|s| *s == Source::Learned)
            && t.failing_since
                .is_some_and(|s| now.saturating_duration_since(s) >= LEARNED_RETRY);
        if forget {
            self.targets.remove(&addr);
            self.counts.forgotten += 1;
            return via;
        }
        let wait = if !t.unproven() {
            let wait = t.backoff;
            t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
            wait
        } else if t.failures < UNPROVEN_FAILURES {
            UNPROVEN_BACKOFF
        } else {
            let parked = t.failures - UNPROVEN_FAILURES;
            PARKED_BACKOFF
                .saturating_mul(1 << parked.min(8))
                .min(PARKED_MAX)
        };
        t.next = now + wait.mul_f64(self.rng.random_range(0.5..1.5));
        via
    }

    /// Evicts the worst never-proven addresses beyond [`MAX_UNPROVEN`]: most failures first,
    /// then the least recently reported. One being probed is never evicted.
    fn bound_unproven(&mut self) {
        let unproven = self.targets.values().filter(|t| t.unproven()).count();
        if unproven <= MAX_UNPROVEN {
            return;
        }
        let mut candidates: Vec<(u32, Reverse<Instant>, SocketAddr)> = self
            .targets
            .iter()
            .filter(|(_, t)| t.unproven() && t.dialing.is_none())
            .map(|(a, t)| (t.failures, Reverse(t.reported), *a))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, _, addr) in candidates.into_iter().take(unproven - MAX_UNPROVEN) {
            self.targets.remove(&addr);
            self.counts.forgotten += 1;
        }
    }

    /// Whether this side dials `t` at all (not while its peer is linked, nor when it is the
    /// other side's to dial, for [`FALLBACK_AFTER`]).
    fn wanted(&self, t: &Target, now: Instant) -> bool {
        t.dialing.is_none()
            && !t.peer.is_some_and(|p| self.links.contains(&p))
            && (t.by_address()
                || t.peer.is_none_or(|p| self.me < p)
                || now.saturating_duration_since(t.known_since) >= FALLBACK_AFTER)
    }

    /// When the other side's turn to dial `t` ends.
    fn fallback_at(&self, t: &Target) -> Option<Instant> {
        (!t.by_address() && t.peer.is_some_and(|p| p < self.me))
            .then_some(t.known_since + FALLBACK_AFTER)
    }

    fn via(&self, addr: SocketAddr, t: &Target, now: Instant) -> Via {
        if !self.probing
            || t.trusted
            || addr.ip().is_loopback()
            || t.proven_until.is_some_and(|u| now < u)
        {
            Via::Main
        } else {
            Via::Probe
        }
    }

    /// The dials to start now; each is marked in flight until [`Self::linked`],
    /// [`Self::probed`] or [`Self::failed`] reports its end.
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<Dial> {
        self.wake = None;
        self.refill(now);
        let dialing_peers: BTreeSet<PeerId> = self
            .targets
            .values()
            .filter(|t| t.dialing.is_some())
            .filter_map(|t| t.peer)
            .collect();
        let mut probes_in_flight = self
            .targets
            .values()
            .filter(|t| t.dialing == Some(Via::Probe))
            .count();
        let mut due: Vec<(u8, u32, Reverse<Instant>, SocketAddr, Via)> = self
            .targets
            .iter()
            .filter(|(_, t)| t.next <= now && self.wanted(t, now))
            .filter(|(_, t)| !t.peer.is_some_and(|p| dialing_peers.contains(&p)))
            .map(|(a, t)| {
                let class = if t.ever_proven || t.fixed || t.trusted {
                    0
                } else if t.failures < UNPROVEN_FAILURES {
                    1
                } else {
                    2
                };
                (
                    class,
                    t.failures,
                    Reverse(t.reported),
                    *a,
                    self.via(*a, t, now),
                )
            })
            .collect();
        due.sort_unstable();
        let mut out = Vec::new();
        let mut started: BTreeSet<PeerId> = BTreeSet::new();
        for (_, _, _, addr, via) in due {
            let Some(t) = self.targets.get_mut(&addr) else {
                continue;
            };
            if t.peer.is_some_and(|p| started.contains(&p)) {
                continue;
            }
            if via == Via::Probe {
                if probes_in_flight >= MAX_PROBES || self.tokens < 1.0 {
                    continue;
                }
                probes_in_flight += 1;
                self.tokens -= 1.0;
                self.counts.probes += 1;
            }
            t.dialing = Some(via);
            if let Some(p) = t.peer {
                started.insert(p);
            }
            out.push(Dial { addr, via });
        }
        out
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(PROBE_RATE)).min(MAX_PROBES as f64);
        self.refilled = now;
    }

    /// When [`Self::poll`] may next have something to start (`None`: only a report can change
    /// that).
    ///
    /// Kept until a report or a poll: an answer still to come stays right as time passes (a
    /// target's turn, its fallback and its proof are instants, not durations), and one already
    /// past makes the runtime poll, which asks again. (Only the wait for probe tokens is
    /// reckoned from `now`: kept, it wakes the runtime early, whose poll refills them.)
    pub(crate) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        if let Some(wake) = self.wake {
            #[cfg(debug_assertions)]
            {
                let fresh = self.compute_wake(now);
                match wake {
                    None => assert_eq!(fresh, None, "a kept wake of none is stale"),
                    Some(w) if w > now => assert!(
                        fresh.is_some_and(|f| f >= w),
                        "a kept wake {w:?} is later than the answer now {fresh:?}"
                    ),
                    Some(_) => {}
                }
            }
            return wake;
        }
        let wake = self.compute_wake(now);
        self.wake = Some(wake);
        wake
    }

    /// [`Self::next_wake`] worked out: a walk of every target.
    fn compute_wake(&self, now: Instant) -> Option<Instant> {
        // Counted only if a target would probe: the runtime asks every turn, and in a mesh
        // whose peers are all linked no target gets that far.
        let probes_in_flight = std::cell::OnceCell::new();
        let probes_in_flight = || {
            *probes_in_flight.get_or_init(|| {
                self.targets
                    .values()
                    .filter(|t| t.dialing == Some(Via::Probe))
                    .count()
            })
        };
        self.targets
            .iter()
            .filter(|(_, t)| {
                t.dialing.is_none() && !t.peer.is_some_and(|p| self.links.contains(&p))
            })
            .filter_map(|(a, t)| {
                let mut at = t.next;
                if !self.wanted(t, now) {
                    at = at.max(self.fallback_at(t)?);
                }
                if self.via(*a, t, at.max(now)) == Via::Probe {
                    if probes_in_flight() >= MAX_PROBES {
                        // A probe's end is a report: nothing to wake for until then.
                        return None;
                    }
                    if self.tokens < 1.0 {
                        let missing = (1.0 - self.tokens) / f64::from(PROBE_RATE);
                        at = at.max(now + Duration::from_secs_f64(missing));
                    }
                }
                Some(at)
            })
            .min()
    }
}

/// Of two links to one peer (both sides dialled), whether the new one replaces the existing
/// one: the link dialled by the lower id is kept, on both sides alike.
pub(crate) fn new_link_wins(me: PeerId, peer: PeerId, existing: PeerId, new: PeerId) -> bool {
    let lower = me.min(peer);
    existing != lower && new == lower
}

/// When a window may count itself a leader candidate before its join grace is over: once every
/// discovery that can tell it has seen all there is ([`Discovered::Settled`]) and every peer
/// found by then (or after) has a link. With a discovery that never settles (mDNS, static
/// peers), the join grace alone decides.
///
/// [`Discovered::Settled`]: statemesh_net::discovery::Discovered::Settled
#[derive(Debug)]
pub(crate) struct Settle {
    /// Discoveries yet to settle; `None` once all have, or when some never will.
    unsettled: Option<BTreeSet<usize>>,
    /// Once they have: peers found with no link yet.
    waiting: Option<BTreeSet<PeerId>>,
}

impl Settle {
    /// `settling`: the discoveries that settle; `all_settle`: whether every discovery does.
    pub(crate) fn new(settling: BTreeSet<usize>, all_settle: bool) -> Self {
        Self {
            unsettled: (all_settle && !settling.is_empty()).then_some(settling),
            waiting: None,
        }
    }

    /// A discovery found `peer` (it has no link yet).
    pub(crate) fn found(&mut self, peer: PeerId) {
        if let Some(w) = self.waiting.as_mut() {
            w.insert(peer);
        }
    }

    /// `peer` has a link, or is gone: it is no longer waited for.
    pub(crate) fn done_with(&mut self, peer: PeerId) {
        if let Some(w) = self.waiting.as_mut() {
            w.remove(&peer);
        }
    }

    /// Discovery `index` settled; `unlinked`: the peers known so far without a link.
    pub(crate) fn settled(&mut self, index: usize, unlinked: impl Iterator<Item = PeerId>) {
        if let Some(u) = self.unsettled.as_mut() {
            u.remove(&index);
            if u.is_empty() {
                self.unsettled = None;
                self.waiting = Some(unlinked.collect());
            }
        }
    }

    /// Whether the window may now count itself a candidate; true once, then never again.
    pub(crate) fn take_ready(&mut self) -> bool {
        if self.waiting.as_ref().is_some_and(BTreeSet::is_empty) {
            self.waiting = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests;

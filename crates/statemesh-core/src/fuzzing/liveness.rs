//! The `liveness` target: the liveness and election state machine driven by a sequence of
//! events.

use std::collections::BTreeMap;

use super::common::{PEERS, Reader, T0, drain, frame, hello_of, new_node, peer_ids};
use super::escaping;
use crate::codec::{self, Message, View};
use crate::liveness::{GossipBeat, Tombstone};
use crate::vv::Beat;
use crate::{
    Config, DeathCause, Event, Incarnation, Leadership, LinkDown, Node, PeerId, Term, Time,
    WriteError,
};

/// One input of the liveness state machine, as raw bytes from the fuzz input (see
/// [`liveness`] for how each field is read).
#[derive(Clone, Debug)]
pub(super) enum Step {
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
    pub(super) fn read(r: &mut Reader<'_>) -> Option<Self> {
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

    pub(super) fn write(&self, out: &mut Vec<u8>) {
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
                    codec::decode_frame(&frame(&Message::Hello(hello)), usize::MAX)
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
                let _ = node.handle_frame(now, pick(*from), &frame(&Message::View(view)));
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
                let _ = node.handle_frame(now, pick(*from), &frame(&Message::Leave(inc)));
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

//! Unit tests of [`super::Liveness`].

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::*;

/// `n` peer ids, the same in every test (the election's tests use them too).
pub(crate) fn ids(n: usize) -> Vec<PeerId> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    (0..n)
        .map(|i| PeerId::generate(1000 + i as u64, &mut rng))
        .collect()
}

/// `ms` milliseconds after the clock's start.
pub(crate) fn t(ms: u64) -> Time {
    Time::from_micros(ms * 1000)
}

/// Makes `l` hear of `peers` at random: about two thirds of them with a beat (incarnation
/// 0-2, counter 0-9, eligible or not), a quarter of those then judged dead (a tombstone of
/// incarnation 0-2). `below(n)`: a random number under `n`.
fn heard_randomly(l: &mut Liveness, peers: &[PeerId], below: &mut impl FnMut(u32) -> u64) {
    let mut ch = Vec::new();
    for peer in peers {
        if below(3) == 0 {
            continue;
        }
        let beat = Beat {
            incarnation: below(3),
            counter: below(10),
        };
        l.observe_beat(*peer, beat, below(2) == 0, t(0), &mut ch);
        if below(4) == 0 {
            let tomb = Tombstone {
                incarnation: below(3),
                cause: DeathCause::Timeout,
            };
            l.observe_tombstone(*peer, tomb, t(0), &mut ch);
        }
    }
}

#[test]
fn late_old_news_never_revives_a_dead_incarnation() {
    let p = ids(2);
    let mut l = Liveness::new(p[0], &Config::default());
    let mut ch = Vec::new();
    l.observe_beat(
        p[1],
        Beat {
            incarnation: 0,
            counter: 5,
        },
        true,
        t(0),
        &mut ch,
    );
    l.judge(t(1500), &mut ch);
    assert!(!l.is_live(&p[1]));
    assert!(l.is_dead(&p[1], 0));
    // A relayed, delayed heartbeat from before the death: higher counter, same incarnation.
    ch.clear();
    l.observe_beat(
        p[1],
        Beat {
            incarnation: 0,
            counter: 9,
        },
        true,
        t(1600),
        &mut ch,
    );
    assert!(!l.is_live(&p[1]), "old news revived a dead incarnation");
    assert!(ch.is_empty());
    // A refuted, newer incarnation is live.
    l.observe_beat(
        p[1],
        Beat {
            incarnation: 1,
            counter: 10,
        },
        true,
        t(1700),
        &mut ch,
    );
    assert!(l.is_live(&p[1]));
    assert_eq!(
        ch,
        vec![LivenessChange::Up(Incarnation {
            peer: p[1],
            number: 1
        })]
    );
}

#[test]
fn a_wrongly_judged_peer_refutes_with_a_new_incarnation() {
    let p = ids(1);
    let mut l = Liveness::new(p[0], &Config::default());
    let mut ch = Vec::new();
    l.observe_tombstone(
        p[0],
        Tombstone {
            incarnation: 0,
            cause: DeathCause::Timeout,
        },
        t(5),
        &mut ch,
    );
    assert_eq!(l.me().number, 1);
    assert_eq!(
        ch,
        vec![LivenessChange::Refuted(Incarnation {
            peer: p[0],
            number: 1
        })]
    );
    // An older tombstone arriving late changes nothing.
    ch.clear();
    l.observe_tombstone(
        p[0],
        Tombstone {
            incarnation: 0,
            cause: DeathCause::Timeout,
        },
        t(6),
        &mut ch,
    );
    assert!(ch.is_empty());
}

#[test]
fn relayed_news_keeps_a_peer_alive_and_a_hint_needs_silence() {
    let p = ids(2);
    let config = Config::default();
    let mut l = Liveness::new(p[0], &config);
    let mut ch = Vec::new();
    l.observe_beat(
        p[1],
        Beat {
            incarnation: 0,
            counter: 1,
        },
        true,
        t(0),
        &mut ch,
    );
    l.link_down(p[1], LinkDown::Hint, t(10), &mut ch);
    // Relayed news after the hint clears it.
    l.observe_beat(
        p[1],
        Beat {
            incarnation: 0,
            counter: 2,
        },
        true,
        t(200),
        &mut ch,
    );
    l.judge(t(700), &mut ch);
    assert!(l.is_live(&p[1]));
    // A hint followed by silence kills before the suspect timeout.
    l.link_down(p[1], LinkDown::Hint, t(800), &mut ch);
    l.judge(t(800) + config.hint_timeout, &mut ch);
    assert!(!l.is_live(&p[1]));
    assert!(
        t(800) + config.hint_timeout < t(200) + config.suspect_timeout + Duration::from_millis(600)
    );
}

#[test]
fn absurd_incarnations_from_peers_are_ignored() {
    let p = ids(2);
    let mut l = Liveness::new(p[0], &Config::default());
    let mut ch = Vec::new();
    let tomb = |incarnation| Tombstone {
        incarnation,
        cause: DeathCause::Timeout,
    };
    l.observe_received_tombstone(p[0], tomb(u64::MAX), t(0), &mut ch);
    assert_eq!(l.me().number, 0);
    assert!(ch.is_empty());
    // The highest acceptable tombstone can still be refuted.
    l.observe_received_tombstone(p[0], tomb(MAX_INCARNATION), t(0), &mut ch);
    assert_eq!(l.me().number, MAX_INCARNATION + 1);
}

#[test]
fn certain_link_loss_kills_at_once() {
    let p = ids(2);
    let mut l = Liveness::new(p[0], &Config::default());
    let mut ch = Vec::new();
    l.observe_beat(p[1], Beat::default(), true, t(0), &mut ch);
    ch.clear();
    l.link_down(p[1], LinkDown::Certain, t(1), &mut ch);
    assert_eq!(
        ch,
        vec![LivenessChange::Down(
            Incarnation {
                peer: p[1],
                number: 0
            },
            DeathCause::LinkClosed
        )]
    );
}

/// A view's beats recorded in one walk leave the peers and the changes exactly as recorded
/// one by one, whatever the view holds: its sender anywhere, beats out of order or twice,
/// this peer's own, peers unknown or judged dead, older or newer beats.
#[test]
fn a_views_beats_in_one_walk_are_recorded_as_one_by_one() {
    use rand_core::RngCore;
    let p = ids(24);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut below = |n: u32| (rng.next_u32() % n) as u64;
    for _ in 0..2_000 {
        let mut l = Liveness::new(p[0], &Config::default());
        heard_randomly(&mut l, &p[1..], &mut below);
        let mut beats: Vec<GossipBeat> = (0..below(30))
            .map(|_| GossipBeat {
                peer: p[below(24) as usize],
                beat: Beat {
                    incarnation: below(4),
                    counter: below(12),
                },
                eligible: below(2) == 0,
            })
            .collect();
        if below(4) != 0 && beats.len() > 1 {
            beats[1..].sort_by_key(|b| b.peer);
        }
        let (mut walked, mut one_by_one) = (l.clone(), l);
        let (mut walked_ch, mut one_by_one_ch) = (Vec::new(), Vec::new());
        walked.observe_beats(&beats, t(5), &mut walked_ch);
        for b in &beats {
            one_by_one.observe_beat(b.peer, b.beat, b.eligible, t(5), &mut one_by_one_ch);
        }
        assert_eq!(
            format!("{walked:?}"),
            format!("{one_by_one:?}"),
            "{beats:?}"
        );
        let sorted = |ch: &[LivenessChange]| {
            let mut v: Vec<String> = ch.iter().map(|c| format!("{c:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&walked_ch), sorted(&one_by_one_ch), "{beats:?}");
    }
}

/// The live peers found in one walk are those `is_live` finds one by one, whatever the
/// peers asked of: known, unknown, judged dead, this peer itself, in order or not, twice.
#[test]
fn the_live_among_peers_in_one_walk_are_those_found_one_by_one() {
    use rand_core::RngCore;
    let p = ids(24);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut below = |n: u32| (rng.next_u32() % n) as u64;
    for _ in 0..2_000 {
        let mut l = Liveness::new(p[below(24) as usize], &Config::default());
        heard_randomly(&mut l, &p, &mut below);
        let mut asked: Vec<(PeerId, usize)> = (0..below(30))
            .map(|i| (p[below(24) as usize], i as usize))
            .collect();
        if below(4) != 0 {
            asked.sort();
        }
        let walked: Vec<usize> = l.live_among(asked.iter().map(|(p, i)| (p, *i))).collect();
        let one_by_one: Vec<usize> = asked
            .iter()
            .filter(|(p, _)| l.is_live(p))
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(walked, one_by_one, "{asked:?}");
    }
}

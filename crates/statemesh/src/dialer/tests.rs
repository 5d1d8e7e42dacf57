use super::*;

/// Peer ids ordered by `n`: v7 ids whose timestamps are `n` milliseconds.
fn peer(n: u8) -> PeerId {
    PeerId::generate(
        1_000 + u64::from(n),
        &mut ChaCha8Rng::seed_from_u64(u64::from(n)),
    )
}

fn addr(n: u32) -> SocketAddr {
    SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + n), 4000))
}

/// A LAN-mode dialler for peer 1 with an mDNS-like discovery (0), a static one (1) and a
/// local one (2).
fn lan(t0: Instant) -> Dialer {
    let mut d = Dialer::new(peer(1), true, t0, 7);
    assert_eq!(d.add_discovery(Trust::Unproven), 0);
    assert_eq!(d.add_discovery(Trust::Static), 1);
    assert_eq!(d.add_discovery(Trust::Proven), 2);
    d
}

#[test]
fn the_lower_id_dials_unless_by_address() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    d.found(t0, 0, Some(peer(0)), addr(1)); // lower than me: theirs to dial
    d.found(t0, 0, Some(peer(2)), addr(2)); // higher: mine
    d.found(t0, 1, None, addr(3)); // static: mine whatever the ids
    let dials = d.poll(t0);
    let addrs: BTreeSet<SocketAddr> = dials.iter().map(|x| x.addr).collect();
    assert_eq!(addrs, BTreeSet::from([addr(2), addr(3)]));
    assert!(dials.iter().all(|x| x.via == Via::Probe));
}

#[test]
fn a_probe_proves_an_address_for_the_main_endpoint() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    d.found(t0, 0, Some(peer(2)), addr(2));
    assert_eq!(
        d.poll(t0),
        vec![Dial {
            addr: addr(2),
            via: Via::Probe
        }]
    );
    // In flight: not dialled twice.
    assert!(d.poll(t0).is_empty());
    let t1 = t0 + Duration::from_millis(3);
    d.probed(t1, addr(2), peer(2));
    assert_eq!(
        d.poll(t1),
        vec![Dial {
            addr: addr(2),
            via: Via::Main
        }]
    );
    d.linked(peer(2), addr(2));
    assert!(
        d.poll(t1 + Duration::from_secs(10)).is_empty(),
        "linked: no dial"
    );
    // The link drops: the proof has expired, so the redial probes again.
    let t2 = t1 + Duration::from_secs(10);
    d.unlinked(t2, peer(2));
    assert!(d.poll(t2).is_empty(), "waits a backoff first");
    let dials = d.poll(t2 + BACKOFF_MAX);
    assert_eq!(
        dials,
        vec![Dial {
            addr: addr(2),
            via: Via::Probe
        }]
    );
}

#[test]
fn local_mode_loopback_and_trusted_addresses_are_dialled_directly() {
    let t0 = Instant::now();
    let mut local = Dialer::new(peer(1), false, t0, 1);
    local.add_discovery(Trust::Unproven);
    local.found(t0, 0, Some(peer(2)), addr(2));
    assert_eq!(local.poll(t0)[0].via, Via::Main);
    let mut d = lan(t0);
    d.found(t0, 2, Some(peer(2)), addr(2));
    d.found(
        t0,
        0,
        Some(peer(3)),
        "127.0.0.1:5000".parse().expect("addr"),
    );
    assert!(d.poll(t0).iter().all(|x| x.via == Via::Main));
}

#[test]
fn probes_are_bounded_in_flight_and_in_rate() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    for n in 0..1000 {
        d.found(t0, 0, Some(peer(2 + (n % 8) as u8)), addr(100 + n));
    }
    assert_eq!(
        d.len(),
        MAX_UNPROVEN,
        "candidates beyond the bound are evicted"
    );
    let first = d.poll(t0);
    assert_eq!(
        first.len(),
        8.min(MAX_PROBES),
        "one per peer, at most MAX_PROBES"
    );
    // Nothing more until a probe ends, however late.
    assert!(d.poll(t0 + Duration::from_secs(5)).is_empty());
    assert_eq!(d.next_wake(t0), None);
    // Probes that fail free their slots; the rate bounds how fast new ones start.
    let t1 = t0 + Duration::from_secs(1);
    for x in &first {
        d.failed(t1, x.addr);
    }
    let mut started = 0;
    let mut t = t1;
    while t < t1 + Duration::from_secs(1) {
        let dials = d.poll(t);
        started += dials.len();
        for x in dials {
            d.failed(t, x.addr);
        }
        t += Duration::from_millis(10);
    }
    let most = MAX_PROBES + PROBE_RATE as usize;
    assert!(
        started <= most,
        "{started} probes in one second (at most {most})"
    );
    assert!(
        started >= PROBE_RATE as usize,
        "{started} probes in one second"
    );
}

#[test]
fn never_proven_addresses_are_parked_and_fresh_ones_go_first() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    for n in 0..20 {
        d.found(t0, 0, Some(peer(2 + (n % 4) as u8)), addr(100 + n));
    }
    // Every probe fails, for two minutes.
    let mut probes_per_10s = Vec::new();
    let mut t = t0;
    for _ in 0..12 {
        let mut probes = 0;
        for _ in 0..100 {
            for x in d.poll(t) {
                probes += 1;
                d.failed(t, x.addr);
            }
            t += Duration::from_millis(100);
        }
        probes_per_10s.push(probes);
    }
    assert_eq!(
        d.len(),
        20,
        "parked, not forgotten: discovery withdraws them"
    );
    // Three tries each within the first seconds, then parked: 10 s doubling (jitter
    // 0.5..1.5), so at most five more each in two minutes.
    assert!(
        probes_per_10s[0] >= 20 * UNPROVEN_FAILURES as usize,
        "{probes_per_10s:?}"
    );
    let total: usize = probes_per_10s.iter().sum();
    assert!(
        total <= 20 * (UNPROVEN_FAILURES as usize + 5),
        "{total} probes of 20 dead addresses in 120 s: {probes_per_10s:?}"
    );
    assert!(
        probes_per_10s[6..].iter().sum::<usize>() <= 20 * 2,
        "parked addresses are retried ever more rarely: {probes_per_10s:?}"
    );
    // Discovery withdraws them (an mDNS record expires): gone.
    for n in 2..6 {
        d.gone(0, peer(n));
    }
    assert_eq!(d.len(), 0);
    // A flood of candidates, then a real peer announces itself: it is probed first.
    for n in 0..100 {
        d.found(t, 0, Some(peer(3 + (n % 5) as u8)), addr(200 + n));
    }
    let t1 = t + Duration::from_millis(1);
    d.found(t1, 0, Some(peer(9)), addr(999));
    let dials = d.poll(t1);
    assert_eq!(
        dials[0].addr,
        addr(999),
        "the newest report first: {dials:?}"
    );
}

#[test]
fn the_higher_id_dials_too_when_the_lower_has_not() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    d.found(t0, 0, Some(peer(0)), addr(1));
    assert!(d.poll(t0).is_empty(), "the lower id's turn first");
    assert_eq!(d.next_wake(t0), Some(t0 + FALLBACK_AFTER));
    let t1 = t0 + FALLBACK_AFTER;
    assert_eq!(
        d.poll(t1),
        vec![Dial {
            addr: addr(1),
            via: Via::Probe
        }]
    );
    // Linked the other way meanwhile: nothing more.
    d.linked(peer(0), addr(1));
    assert!(d.poll(t1 + Duration::from_secs(60)).is_empty());
}

#[test]
fn learned_addresses_are_redialled_for_a_while_then_forgotten() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    d.learned(t0, peer(0), addr(5)); // a lower id: dialled anyway, by address
    let mut t = t0;
    let mut dials = 0;
    while t < t0 + LEARNED_RETRY + BACKOFF_MAX * 2 {
        for x in d.poll(t) {
            dials += 1;
            d.failed(t, x.addr);
        }
        t += Duration::from_millis(50);
    }
    assert_eq!(
        d.len(),
        0,
        "forgotten after {LEARNED_RETRY:?} without an answer"
    );
    // 100 ms doubling to 5 s (jitter 0.5..1.5) over a minute: about 6 + 11 dials.
    assert!((8..=40).contains(&dials), "{dials} dials");
}

#[test]
fn a_new_peer_at_a_known_address_is_dialled_at_once() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    d.found(t0, 2, Some(peer(2)), addr(2));
    assert_eq!(d.poll(t0).len(), 1);
    d.linked(peer(2), addr(2));
    // The window restarts with a new id at the same address while the old link lingers.
    d.found(t0, 2, Some(peer(3)), addr(2));
    assert_eq!(
        d.poll(t0),
        vec![Dial {
            addr: addr(2),
            via: Via::Main
        }]
    );
}

#[test]
fn static_peers_are_dialled_for_ever_and_a_departed_query_is_forgotten() {
    let t0 = Instant::now();
    let mut d = lan(t0);
    d.found(t0, 1, None, addr(3));
    let mut t = t0;
    for _ in 0..100 {
        for x in d.poll(t) {
            d.failed(t, x.addr);
        }
        t += BACKOFF_MAX * 2;
    }
    assert_eq!(d.len(), 1, "a static peer is never forgotten");
    d.found(t, 2, Some(peer(4)), addr(4));
    d.forget_peer(peer(4));
    assert_eq!(d.len(), 1);
}

#[test]
fn the_link_dialled_by_the_lower_id_is_kept_on_both_sides() {
    let (low, high) = (peer(1), peer(2));
    // Seen from the lower side and from the higher side, whatever arrived first.
    for (me, other) in [(low, high), (high, low)] {
        assert!(new_link_wins(me, other, high, low));
        assert!(!new_link_wins(me, other, low, high));
        assert!(!new_link_wins(me, other, low, low));
        assert!(!new_link_wins(me, other, high, high));
    }
}

#[test]
fn settling_waits_for_every_discovery_then_every_peer_found() {
    let mut s = Settle::new(BTreeSet::from([0, 1]), true);
    s.found(peer(2)); // before settling: counted from the known peers at settle time
    s.settled(0, std::iter::empty());
    assert!(!s.take_ready(), "discovery 1 has not settled");
    s.settled(1, [peer(2), peer(3)].into_iter());
    assert!(!s.take_ready(), "two peers without a link");
    s.done_with(peer(2));
    s.found(peer(4)); // found after settling: waited for too
    s.done_with(peer(3));
    assert!(!s.take_ready());
    s.done_with(peer(4));
    assert!(s.take_ready());
    assert!(!s.take_ready(), "once");
    // A discovery that never settles: only the join grace decides.
    let mut never = Settle::new(BTreeSet::from([0]), false);
    never.settled(0, std::iter::empty());
    assert!(!never.take_ready());
}

/// The answer of `next_wake` is kept between turns; every report drops it.
#[test]
fn the_next_wake_is_asked_again_after_every_report() {
    let t0 = Instant::now();
    let mut d = Dialer::new(peer(1), false, t0, 7);
    d.add_discovery(Trust::Proven);
    d.found(t0, 0, Some(peer(2)), addr(1));
    assert_eq!(d.next_wake(t0), Some(t0), "due at once");
    let dials = d.poll(t0);
    assert_eq!(dials.len(), 1);
    assert_eq!(d.next_wake(t0), None, "dialling: nothing to wake for");
    d.linked(peer(2), addr(1));
    let later = t0 + Duration::from_secs(60);
    assert_eq!(d.next_wake(later), None, "linked: still nothing");
    // The link goes down: the address is redialled after a backoff, not never.
    d.unlinked(later, peer(2));
    let redial = d
        .next_wake(later)
        .expect("a redial after the link went down");
    assert!(redial > later && redial <= later + BACKOFF_MIN.mul_f64(1.5));
    // A failure moves it back by the failure's backoff.
    assert_eq!(d.poll(redial).len(), 1);
    assert_eq!(d.next_wake(redial), None);
    assert_eq!(d.failed(redial, addr(1)), Some(Via::Main));
    assert!(d.next_wake(redial).is_some_and(|w| w > redial));
    // A new report of another peer, due at once, is seen although an answer was kept.
    d.found(redial, 0, Some(peer(3)), addr(2));
    assert_eq!(d.next_wake(redial), Some(redial));
}

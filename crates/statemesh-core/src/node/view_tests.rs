//! The node's tests of views and heartbeats: what a peer's view tells the node (writes it
//! holds, a sync owed, nothing new), the heartbeat grid, the backlog a view settles.

use super::tests::{linked, node, node_with, pump};
use super::*;
use crate::replica::Scope;

/// The view `n` sends at its tick at `now` (its other outputs dropped).
fn view_at(n: &mut Node, now: Time) -> bytes::Bytes {
    n.handle_tick(now);
    std::iter::from_fn(|| n.poll_transmit())
        .find(|t| codec::is_view(&t.frame))
        .expect("a view each heartbeat")
        .frame
}

/// Delivers every frame the nodes send to the node it is for, except those `drop` names
/// (as `(from, to)` indexes), until none is left.
fn route(nodes: &mut [Node], now: Time, drop: &[(usize, usize)]) {
    route_keeping(nodes, now, drop, &mut Vec::new());
}

/// [`route`], keeping the frames not delivered in `kept`, in order; returns the sync messages
/// delivered, as `(from, to)` indexes.
fn route_keeping(
    nodes: &mut [Node],
    now: Time,
    drop: &[(usize, usize)],
    kept: &mut Vec<bytes::Bytes>,
) -> Vec<(usize, usize)> {
    let index = |nodes: &[Node], id: PeerId| {
        nodes
            .iter()
            .position(|n| n.me().peer == id)
            .expect("a node")
    };
    let mut syncs = Vec::new();
    for _ in 0..50 {
        let mut moved = false;
        for from in 0..nodes.len() {
            let from_id = nodes[from].me().peer;
            while let Some(t) = nodes[from].poll_transmit() {
                moved = true;
                let to = index(nodes, t.to);
                if drop.contains(&(from, to)) {
                    kept.push(t.frame);
                    continue;
                }
                if codec::is_sync(&t.frame) {
                    syncs.push((from, to));
                }
                nodes[to]
                    .handle_frame(now, from_id, &t.frame)
                    .expect("accepted");
            }
        }
        if !moved {
            return syncs;
        }
    }
    panic!("the nodes kept talking");
}

/// Three nodes, each linked to the others, in a configuration that elects no leader (and
/// records no term in the document) during a test's heartbeats.
fn three_linked() -> [Node; 3] {
    let config = Config {
        join_grace: Duration::from_secs(10),
        ..Config::default()
    };
    let mut n = [1, 2, 3].map(|seed| node_with(seed, config.clone()));
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                let hello = n[b].hello();
                n[a].handle_link_up(Time::ZERO, &hello);
            }
        }
    }
    route(&mut n, Time::ZERO, &[]);
    n
}

#[test]
fn a_peer_whose_view_shows_our_document_holds_our_pending_writes() {
    let mut n = three_linked();
    // The writer's messages to peer 1 are still on their way; peer 1 gets the write from
    // peer 2 (which has held it for the relay grace when a view shows peer 1 still without
    // it), and sends no sync message of its own to the writer: only its next view (equal
    // documents) tells.
    let write = n[0].put("c", "k", &1i64, Scope::Durable).expect("write").id;
    route(&mut n, Time::ZERO, &[(0, 1)]);
    let beat = Config::default().heartbeat_interval;
    // Views a heartbeat apart; peer 2 got the write at 0, so the relay comes with the first
    // view past the grace from then.
    let relayed_at = link::RELAY_GRACE_HALF_BEATS.div_ceil(2);
    for k in 1..=relayed_at {
        let later = Time::from_duration(beat * k);
        n[1].handle_tick(later);
        n[2].handle_tick(later);
        route(&mut n, later, &[(0, 1)]);
        assert_eq!(
            n[1].get::<i64>("c", "k").expect("read").is_some(),
            k == relayed_at,
            "relayed once peer 2 has held the write for the grace, not before"
        );
        assert_eq!(
            n[2].stats().syncs_owed_by_views,
            u64::from(k >= relayed_at),
            "the round counted as owed by a view"
        );
    }
    let p1 = n[1].me().peer;
    let held_by_1 = |node: &mut Node| {
        std::iter::from_fn(|| node.poll_event()).any(
            |e| matches!(e, Event::Replicated { write: w, peer, .. } if w == write && peer == p1),
        )
    };
    assert!(!held_by_1(&mut n[0]), "no message of peer 1 said so yet");
    let later = Time::from_duration(beat * (relayed_at + 1));
    n[1].handle_tick(later);
    route(&mut n, later, &[(0, 1)]);
    assert!(
        held_by_1(&mut n[0]),
        "its view says its document is the writer's"
    );
}

/// A writer's changes that reach one peer a heartbeat later than another (in flight from the
/// writer, as on a loaded machine) owe no sync round between the two peers, though their
/// documents differ at every view: each difference is younger than the relay grace. Counted
/// from the first view that differed, as it was, every write was relayed between them once
/// the grace had passed (twice the sync messages per write of `scale` at 64 windows).
#[test]
fn changes_in_flight_from_their_writer_are_not_relayed() {
    let mut n = three_linked();
    let p0 = n[0].me().peer;
    let beat = Config::default().heartbeat_interval;
    let mut late: Vec<bytes::Bytes> = Vec::new();
    let mut between = 0;
    for k in 1..=8u32 {
        let now = Time::from_duration(beat * k);
        // The writer's frames to peer 2 of the round before arrive now.
        for frame in std::mem::take(&mut late) {
            n[2].handle_frame(now, p0, &frame).expect("accepted");
        }
        n[0].put("c", &format!("k{k}"), &i64::from(k), Scope::Durable)
            .expect("write");
        for node in &mut n {
            node.handle_tick(now);
        }
        let syncs = route_keeping(&mut n, now, &[(0, 2)], &mut late);
        assert!(
            n[1].get::<i64>("c", &format!("k{k}"))
                .expect("read")
                .is_some()
                && n[2]
                    .get::<i64>("c", &format!("k{k}"))
                    .expect("read")
                    .is_none(),
            "peer 1 got write {k} at once, peer 2 not yet"
        );
        between += syncs
            .iter()
            .filter(|&&(a, b)| (a, b) == (1, 2) || (a, b) == (2, 1))
            .count();
    }
    assert_eq!(between, 0, "sync messages between the two peers");
    assert_eq!(n[1].stats().syncs_owed_by_views, 0);
    assert_eq!(n[2].stats().syncs_owed_by_views, 0);
    // The last write arrives as the others did.
    let now = Time::from_duration(beat * 9);
    for frame in late {
        n[2].handle_frame(now, p0, &frame).expect("accepted");
    }
    route(&mut n, now, &[]);
    assert_eq!(n[2].heads(), n[0].heads(), "every write reached peer 2");
}

/// A sync message that carries only changes its receiver holds already (they reached it
/// first through another peer, as Automerge's bloom filters let a peer send what the other got
/// meanwhile) is answered all the same: its sender holds its next local changes until the
/// answer (see `push_changes`), and Automerge says nothing when it has nothing to say, so the
/// sender's next write waited a heartbeat interval (192 ms in `propagation`).
#[test]
fn a_message_of_changes_already_held_is_answered() {
    let (mut a, mut b) = linked();
    let (pa, pb) = (a.me().peer, b.me().peer);
    a.put("c", "k", &1i64, Scope::Durable).expect("write");
    let carrying: Vec<bytes::Bytes> = std::iter::from_fn(|| a.poll_transmit())
        .filter(|t| t.to == pb)
        .map(|t| t.frame)
        .filter(|f| {
            matches!(codec::decode_frame(f, 1 << 24), Ok(Message::Sync(bytes))
                if Replica::decode_sync(&bytes).is_ok_and(|m| !m.changes.is_empty()))
        })
        .collect();
    assert_eq!(carrying.len(), 1, "the write leaves in one message");
    b.handle_frame(Time::ZERO, pa, &carrying[0])
        .expect("accepted");
    // Both know the other holds the write.
    pump(&mut a, &mut b, Time::ZERO);
    assert!(a.poll_transmit().is_none() && b.poll_transmit().is_none());
    // The same change again: nothing new for `b`, which has said so already.
    let heads = b.heads();
    b.handle_frame(Time::ZERO, pa, &carrying[0])
        .expect("accepted");
    assert_eq!(b.heads(), heads, "nothing new in it");
    let answered = std::iter::from_fn(|| b.poll_transmit()).any(|t| {
        t.to == pa && matches!(codec::decode_frame(&t.frame, 1 << 24), Ok(Message::Sync(_)))
    });
    assert!(answered, "a message that carried changes got no answer");
}

/// A message carrying a change is lost, and the sender's sync state marks the change sent:
/// Automerge never sends it again, the receiver keeps asking for it, and both answer each other
/// at once, for ever (storms of 2,600 change-less messages per second per pair, ended only
/// by the stall reset two seconds later). The exchange is restarted after a few rounds without
/// progress, and the change arrives.
#[test]
fn a_sync_exchange_going_round_in_circles_is_restarted() {
    let (mut a, mut b) = linked();
    a.put("c", "lost", &1i64, Scope::Durable).expect("write");
    // Its message never arrives (a's sync state believes it sent the change).
    while a.poll_transmit().is_some() {}
    // The next exchange: b writes, a answers and names the change in its heads, b asks for it.
    b.put("c", "later", &2i64, Scope::Durable).expect("write");
    let resets = a.stats().sync_resets + b.stats().sync_resets;
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(b.get::<i64>("c", "lost").expect("read"), Some(1));
    assert_eq!(a.heads(), b.heads());
    assert!(
        a.stats().sync_resets + b.stats().sync_resets > resets,
        "the exchange settled without a restart"
    );
}

#[test]
fn aligned_heartbeats_fall_on_the_grid() {
    let mut n = node(1);
    let beat = Config::default().heartbeat_interval;
    n.align_heartbeats(Duration::from_millis(70));
    let views_at = |n: &mut Node| std::iter::from_fn(|| n.poll_transmit()).count();
    let hello = node(2).hello();
    n.handle_link_up(Time::ZERO, &hello);
    while n.poll_transmit().is_some() {}
    // The first beat is due at once; the next on the grid (70 ms), not one interval later.
    n.handle_tick(Time::from_micros(5_000));
    assert!(views_at(&mut n) > 0);
    assert!(n.poll_timeout() <= Time::from_micros(70_000));
    // A late tick does not shift the grid.
    n.handle_tick(Time::from_micros(95_000));
    assert!(views_at(&mut n) > 0);
    let next = Time::from_micros(70_000) + beat;
    assert!(n.poll_timeout() <= next);
    n.handle_tick(next - Duration::from_micros(1));
    assert_eq!(views_at(&mut n), 0, "no view before the grid point");
    n.handle_tick(next);
    assert!(views_at(&mut n) > 0, "a view on the grid point");
}

/// The backlog that backpressure counts: the entries changed by local writes not yet held by
/// every live linked peer. It rises with writes (a transaction by the entries it changed, open
/// or committed), falls as the peer acknowledges them, and counts no peer that is gone.
#[test]
fn the_backlog_counts_written_entries_not_held_by_every_live_peer() {
    let (mut a, mut b) = linked();
    assert_eq!(a.backlog(), 0);
    for i in 0..10 {
        a.put("c", &format!("k{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    assert_eq!(a.backlog(), 10);
    assert!(
        !a.put("c", "k0", &0i64, Scope::Durable)
            .expect("write")
            .changed
    );
    assert_eq!(
        a.backlog(),
        10,
        "a write that changed nothing is not counted"
    );
    pump(&mut a, &mut b, Time::ZERO);
    assert_eq!(a.backlog(), 0, "the peer holds them all");
    for i in 0..3 {
        a.put("c", &format!("m{i}"), &(i as i64), Scope::Durable)
            .expect("write");
    }
    assert_eq!(a.backlog(), 3);
    // Five records and a counter entry in one transaction, the first record written twice.
    let (_, written) = a
        .transact(|tx| {
            for i in 0..5 {
                tx.put("c", &format!("t{i}"), &(i as i64), Scope::Durable)?;
            }
            tx.put("c", "t0", &9i64, Scope::Durable)?;
            tx.add("n", 1, Scope::Durable)
        })
        .expect("write");
    assert_eq!(written.entries, 6, "the write says its weight");
    assert_eq!(
        a.backlog(),
        9,
        "the transaction, open, weighs its six entries"
    );
    a.settle();
    assert_eq!(a.backlog(), 9, "and as much committed");
    a.handle_link_down(Time::ZERO, b.me().peer, LinkDown::Certain);
    assert_eq!(a.backlog(), 0, "no live linked peer: nothing to wait for");
}

/// A node busy for a long time (the runtime's driver applying a backlog) takes in nothing from
/// its heart meanwhile, while its heartbeat task keeps judging views: what the heart leaves for
/// the node stays bounded, a newer view of a peer superseding the one not yet taken in.
#[test]
fn views_left_for_a_busy_node_stay_one_per_peer() {
    let (mut a, mut b) = linked();
    // b's views show a document a does not hold: each is news for a's node.
    b.put("c", "k", &1i64, Scope::Durable).expect("write");
    let pulse = a.pulse();
    let from = b.me().peer;
    let beat = Config::default().heartbeat_interval;
    let mut judged = 0;
    for i in 1..=100u32 {
        let now = Time::from_duration(beat * i);
        b.handle_beat(now);
        while let Some(t) = b.poll_view() {
            let mut heart = pulse.lock();
            heart.handle_view(now, from, &t.frame).expect("a view");
            heart.handle_beat(now);
            judged += 1;
        }
    }
    assert!(judged >= 100, "every beat of b sent a view: {judged}");
    let views = |a: &Node| {
        let heart = a.heart();
        heart
            .notes
            .iter()
            .filter(|n| matches!(n, heart::Note::View { .. }))
            .count()
    };
    assert_eq!(views(&a), 1, "one view of b waits for the node");
    assert!(a.heart().notes.len() < 10, "{:?}", a.heart().notes);
    // Taken in at the node's next poll; b, heard all along, is live.
    while a.poll_event().is_some() {}
    assert!(a.heart().notes.is_empty());
    assert!(a.is_live(&from));
}

/// A view that repeats what the node already took in of its sender (the same document and
/// leader records as this node's, neither changed since) is not handed to the node: in a quiet
/// mesh no view wakes it. One that differs still is.
#[test]
fn views_that_tell_nothing_new_do_not_wake_the_node() {
    let (mut a, mut b) = linked();
    let beat = Config::default().heartbeat_interval;
    let heart = a.pulse();
    let from = b.me().peer;
    let view_of = |b: &mut Node, k: u32| {
        let now = Time::from_duration(beat * k);
        (now, view_at(b, now))
    };
    let (now, frame) = view_of(&mut b, 1);
    heart.lock().handle_view(now, from, &frame).expect("a view");
    // The node takes in what the heart left (a note of this view, unless one of the same
    // digests was taken in while linking).
    while a.poll_event().is_some() {}
    assert!(!heart.lock().wants_node());
    let (now, frame) = view_of(&mut b, 2);
    heart.lock().handle_view(now, from, &frame).expect("a view");
    assert!(
        !heart.lock().wants_node(),
        "a view equal to the last one taken in, both sides unchanged"
    );
    // A local write: the peer's next view shows another document than this one.
    a.put("c", "k", &1i64, Scope::Durable).expect("write");
    let (now, frame) = view_of(&mut b, 3);
    heart.lock().handle_view(now, from, &frame).expect("a view");
    assert!(
        heart.lock().wants_node(),
        "a view that differs reaches the node"
    );
}

/// A view that differs waits for the node: the heart wakes it for notes of views alone only
/// once the first has waited a quarter of a heartbeat interval, and once for them; liveness
/// news wakes it at once. Taken in, the notes owe no wake.
#[test]
fn notes_of_views_wake_the_node_late_and_once_liveness_news_at_once() {
    let (mut a, mut b) = linked();
    let beat = Config::default().heartbeat_interval;
    let heart = a.pulse();
    let from = b.me().peer;
    while a.poll_event().is_some() {}
    // A local write, committed (and its document's digest published) by the node's outputs:
    // the peer's next view shows another document than this one.
    a.put("c", "k", &1i64, Scope::Durable).expect("write");
    while a.poll_transmit().is_some() {}
    let now = Time::from_duration(beat);
    let frame = view_at(&mut b, now);
    heart.lock().handle_view(now, from, &frame).expect("a view");
    let due = now + beat / 4;
    {
        let mut h = heart.lock();
        assert!(h.wants_node(), "a view that differs is left for the node");
        assert_eq!(h.poll_wake_timeout(), Some(due));
        assert!(!h.take_wake(now), "not at once");
        assert!(!h.take_wake(Time::from_duration(beat + beat / 4 - beat / 100)));
        assert!(h.take_wake(due), "once the note has waited");
        assert!(!h.take_wake(due), "and only once");
        assert_eq!(h.poll_wake_timeout(), None);
        // A newer view of the peer replaces the note not yet taken in: it waits anew.
        h.handle_view(due, from, &frame).expect("a view");
        assert_eq!(h.poll_wake_timeout(), Some(due + beat / 4));
        assert!(h.wants_node());
    }
    // Taken in at the node's next poll: nothing left, no wake owed.
    while a.poll_event().is_some() {}
    assert!(!heart.lock().wants_node());
    assert_eq!(heart.lock().poll_wake_timeout(), None);
    // Past the suspect timeout with no view of the peer (and no tick here): liveness news
    // (the peer's death, or this node's own freeze), which wakes the node at once.
    let later = due + Config::default().suspect_timeout * 2;
    let mut h = heart.lock();
    h.handle_beat(later);
    assert!(h.take_wake(later), "liveness news wakes the node at once");
}

/// A peer whose view shows this node's document is sent, with this node's next write, that
/// write alone: the view moves its sync state as a message of its own saying so would. Moved
/// only by its messages, the state of a peer last heard from before ten changes of a third
/// node had the write carry all of them (at 64 windows writing in turn, 40-54 changes in
/// every message of a write).
#[test]
fn a_peer_whose_view_shows_our_document_is_sent_only_what_is_new() {
    let beat = Config::default().heartbeat_interval;
    for views in [false, true] {
        let mut n = three_linked();
        let p1 = n[1].me().peer;
        // Nodes 0 and 1 get ten changes from node 2, and exchange nothing.
        for k in 0..10i64 {
            n[2].put("c", &format!("k{k}"), &k, Scope::Durable)
                .expect("write");
            route(&mut n, Time::ZERO, &[(0, 1), (1, 0)]);
        }
        assert_eq!(n[0].heads(), n[1].heads());
        if views {
            let later = Time::from_duration(beat);
            n[1].handle_tick(later);
            route(&mut n, later, &[]);
        }
        n[0].put("c", "new", &1i64, Scope::Durable).expect("write");
        let mut carried = Vec::new();
        while let Some(t) = n[0].poll_transmit() {
            if t.to == p1
                && let Ok(Message::Sync(bytes)) = codec::decode_frame(&t.frame, usize::MAX)
            {
                let message = automerge::sync::Message::decode(&bytes).expect("a sync message");
                carried.push(message.changes.len());
            }
        }
        assert_eq!(carried.len(), 1, "one message to peer 1");
        if views {
            assert_eq!(carried[0], 1, "the write alone");
        } else {
            // The ten, the channel's own change, the write.
            assert_eq!(carried[0], 12, "every change since peer 1 last spoke");
        }
    }
}

/// A view decoded before the heart is taken (as the runtime's pulse does, so that the heart is
/// held for the judgement only) is taken in as `handle_view` takes its frame; a frame that
/// does not decode, or is not a view, is refused and counted, and changes nothing.
#[test]
fn views_decoded_without_the_heart_are_judged_as_their_frames() {
    use super::DecodedView;
    let (mut a, mut b) = linked();
    let beat = Config::default().heartbeat_interval;
    let heart = a.pulse();
    let from = b.me().peer;
    let max = Config::default().max_frame;
    let now = Time::from_duration(beat);
    // A local write, committed (its sync message is not delivered): the peer's next view
    // shows another document than this one.
    a.put("c", "k", &1i64, Scope::Durable).expect("write");
    while a.poll_transmit().is_some() {}
    let frame = view_at(&mut b, now);
    let stats = a.stats();
    let not_a_view = codec::encode_frame(&Message::Leave(b.me()), max).expect("encodes");
    let cut = &frame[..frame.len() - 1];
    for (bad, decode_error) in [(cut, true), (&not_a_view[..], false)] {
        let refused = heart
            .lock()
            .handle_decoded_view(now, from, DecodedView::decode(bad, max));
        match refused {
            Err(ReceiveError::Decode(_)) if decode_error => {}
            Err(ReceiveError::NotAView) if !decode_error => {}
            other => panic!("not refused as it should be: {other:?}"),
        }
        assert!(!heart.lock().wants_node(), "a refused frame left a note");
    }
    let after = a.stats();
    assert_eq!(after.decode_errors, stats.decode_errors + 1);
    assert_eq!(after.frames_in, stats.frames_in + 2);
    // The view itself: it shows another document than this node's, so the node is told.
    heart
        .lock()
        .handle_decoded_view(now, from, DecodedView::decode(&frame, max))
        .expect("a view");
    assert!(heart.lock().wants_node(), "the view reached the heart");
    assert_eq!(a.stats().frames_in, stats.frames_in + 3);
}

/// The peers `n`'s pending views go to, in order (its other outputs dropped).
fn views_to(n: &mut Node) -> Vec<PeerId> {
    std::iter::from_fn(|| n.poll_transmit())
        .filter(|t| codec::is_view(&t.frame))
        .map(|t| t.to)
        .collect()
}

#[test]
fn a_failover_is_told_at_once_by_the_new_leader_to_all_and_by_the_others_to_it_alone() {
    // Ids rise with the seed: node 0 leads, node 1 is next.
    let mut n = [1, 2, 3, 4].map(node);
    for a in 0..4 {
        for b in 0..4 {
            if a != b {
                let hello = n[b].hello();
                n[a].handle_link_up(Time::ZERO, &hello);
            }
        }
    }
    for node in &mut n {
        node.handle_settled(Time::ZERO);
    }
    route(&mut n, Time::ZERO, &[]);
    let ids = n.each_ref().map(|n| n.me().peer);
    assert!(ids.is_sorted());
    for node in &n {
        assert_eq!(node.leadership().leader, Some(ids[0]));
        assert!(
            node.leadership().term.is_some(),
            "every peer knows the claim"
        );
    }

    // Node 0 dies; node 2 sees it first. Its new leader does not know yet: node 2 tells it,
    // and it alone.
    let now = Time::from_micros(1_000);
    let [_, mut next, mut other, mut last] = n;
    other.handle_link_down(now, ids[0], LinkDown::Certain);
    assert_eq!(other.leadership().leader, Some(ids[1]));
    assert_eq!(other.leadership().term, None);
    assert_eq!(views_to(&mut other), vec![ids[1]]);

    // The new leader sees it and claims: everyone hears the claim at once.
    next.handle_link_down(now, ids[0], LinkDown::Certain);
    let term = next.my_term().expect("claims");
    let claim = std::iter::from_fn(|| next.poll_transmit())
        .find(|t| codec::is_view(&t.frame) && t.to == ids[2])
        .expect("the claim, at once")
        .frame;
    assert_eq!(
        views_to(&mut next),
        vec![ids[3]],
        "the claim to the rest too"
    );

    // A peer that learns the new term from the claim has nothing to tell anyone at once.
    other.handle_frame(now, ids[1], &claim).expect("accepted");
    assert_eq!(other.leadership().term, Some(term));
    assert_eq!(views_to(&mut other), Vec::<PeerId>::new());

    // Nor does one that had seen the death and learns the claim before it could tell.
    last.handle_link_down(now, ids[0], LinkDown::Certain);
    last.handle_frame(now, ids[1], &claim).expect("accepted");
    assert_eq!(last.leadership().term, Some(term));
    assert_eq!(
        views_to(&mut last),
        vec![ids[1]],
        "its news of the death, queued before"
    );
}

//! The seed inputs of the core's fuzz targets.

use super::common::{MAX, PEERS, T0, drain, frame, hello_of, new_node, payload, peer_ids};
use super::liveness::Step;
use super::sync_receive::{limits, sync_fixture};
use crate::codec::{self, Message};
use crate::{Config, Node, Persist, Scope, WriteError};

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
/// the messages it sent, in order.
fn peer_exchange() -> Vec<Message> {
    let fixture = sync_fixture();
    let mut peer = new_node(fixture.peer, Config::default(), 2);
    settle_and_record_term(&mut peer);
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
        peer.handle_frame(T0, from, &frame(m))
            .unwrap_or_else(|e| panic!("the peer refused the fixture's frame: {e}"));
        out.extend(drain(&mut peer).0.into_iter().map(|(_, m)| m));
    }
    peer.leave(T0);
    out.extend(drain(&mut peer).0.into_iter().map(|(_, m)| m));
    out
}

/// Lets `node` lead alone and record its term in the document (a heartbeat interval after
/// its claim), so that the seeds carry a stored term. Its clock stays at `T0` for the rest.
fn settle_and_record_term(node: &mut Node) {
    node.handle_settled(T0);
    node.handle_tick(T0 + node.config().heartbeat_interval);
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "hello",
        Message::View(_) => "view",
        Message::Leave(_) => "leave",
        Message::Sync(_) => "sync",
        Message::Leader(_) => "leader",
        Message::Peers(_) => "peers",
        Message::ViewRoute(_) => "view-route",
        Message::ViewsHeard(_) => "views-heard",
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
    let routes = [
        Message::ViewRoute(codec::ViewRoute {
            port: 7412,
            route: 0x5eed,
        }),
        Message::ViewsHeard(0x5eed),
    ];
    let messages = std::iter::once(hello)
        .chain(peer_exchange())
        .chain(std::iter::once(peers))
        .chain(routes);
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
                2, 0, 0, 3, 2, 0, 0, 0, 1, 1, 0, 1, 2, 12, 5, 5, 9, 0, 0, 0, 0, 0,
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
            node.persisted(p.seq());
            out.push(p);
        }
    }
    out
}

fn bytes_of(p: &Persist) -> &[u8] {
    p.bytes()
}

/// A state file of the first layout (schema 1), which loads migrated: records of two channels
/// (one nested, one presence-scoped), counter entries of both scopes, a term.
fn schema1_seed() -> Vec<u8> {
    use crate::value::Value;
    let [a, ..] = peer_ids();
    crate::replica::schema1_file(
        a,
        &[
            ("probes", "api:443", Value::Str("up".into()), false),
            (
                "config",
                "limits",
                Value::Map([("max".to_owned(), Value::Int(8))].into()),
                false,
            ),
            ("windows", "w1", Value::Bool(true), true),
        ],
        &[("ws/desired", "d", 2), ("ws/running", "p", 1)],
        3,
    )
}

fn state_seeds() -> Vec<(String, Vec<u8>)> {
    let [a, b, ..] = peer_ids();
    // A file of appends, as the store writes them.
    let mut node = new_node(a, Config::default(), 1);
    settle_and_record_term(&mut node);
    let appends: Vec<u8> = persisted(&mut node, 3)
        .iter()
        .flat_map(bytes_of)
        .copied()
        .collect();
    // A snapshot (compaction), then more appends after it.
    let compact = Config {
        compact_every: 2,
        compact_min_bytes: 0,
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
        ("schema1-snapshot".into(), schema1_seed()),
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
    use crate::fuzzing::common::Reader;
    use crate::fuzzing::hostile::{hostile_changes, hostile_sync};
    use crate::fuzzing::sync_receive::SyncFixture;

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
        node.handle_frame(T0, peer, &codec::frame_raw(&last_sync))
            .expect("accepted");
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
            node.handle_frame(T0, peer, &frame(&Message::Sync(bytes)))
                .unwrap_or_else(|e| panic!("{name} refused: {e}"));
            assert_ne!(node.heads(), before, "{name} changed nothing");
        }
    }

    #[test]
    fn state_seeds_load() {
        for name in [
            "appends",
            "snapshot-then-appends",
            "two-peers-snapshot",
            "schema1-snapshot",
        ] {
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

//! The driver's flush after every turn: the node's outputs carried out (frames to the links,
//! change notifications first, persists to the store's thread, events), and what the runtime
//! publishes from the node (backpressure, acknowledgements, link counts, leadership, sync).

use std::sync::Arc;
use std::time::Instant;

use statemesh_core::Event;

use super::pulse::{self, PulseLink};
use super::{Run, SLOW_TURN};

impl Run {
    /// Carries out the node's outputs: frames, events, persistence.
    pub(super) fn flush(&mut self) {
        let mut frames = Vec::new();
        let mut events = Vec::new();
        let mut persists = Vec::new();
        let (glance, synced, mut ack_progress) = {
            let t0 = Instant::now();
            let mut node = self.shared.node_off_worker();
            let t_lock = t0.elapsed();
            while let Some(t) = node.poll_transmit() {
                frames.push(t);
            }
            let t_tx = t0.elapsed();
            while let Some(p) = node.poll_persist() {
                let report = node.awaits_persist(p.seq());
                persists.push((p, report));
            }
            let t_persist = t0.elapsed();
            if t_persist >= SLOW_TURN {
                tracing::debug!(
                    lock_ms = t_lock.as_secs_f64() * 1e3,
                    transmit_ms = (t_tx - t_lock).as_secs_f64() * 1e3,
                    persist_ms = (t_persist - t_tx).as_secs_f64() * 1e3,
                    "slow flush"
                );
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            let now = self.shared.now();
            self.shared.judge_backlog(&node);
            // Links to peers judged dead are not counted while their connection winds down
            // (those this turn closes are to dead peers too).
            let glance = node.try_glance(now, self.links.keys());
            let in_sync = node.in_sync();
            (glance, in_sync, node.ack_progress())
        };
        // The heart held by the pulse: the leadership is the pulse's to publish after its
        // turn, and the rest is as the last look found it.
        let (leadership, synced, live) = match glance {
            Some(g) => {
                self.joined = g.joined;
                (Some(g.leadership), g.joined && synced, Some(g.live))
            }
            None => (None, self.joined && synced, None),
        };
        if std::mem::take(&mut self.links_changed) {
            self.close_stale_view_routes();
            self.shared
                .set_link_keys(self.links.iter().map(|(p, l)| (p, l.key)));
            *self.pulse_links.lock() = Arc::new(
                self.links
                    .iter()
                    .map(|(p, l)| {
                        let link = PulseLink {
                            conn: l.conn,
                            connection: l.connection.clone(),
                            tx: l.tx.clone(),
                            sealed: l.views.sender.clone(),
                        };
                        (*p, link)
                    })
                    .collect(),
            );
        }
        // Change notifications first: what follows wakes the links' writers and the store's
        // thread, which then ran ahead of the application's reader (`propagation`, 4 windows:
        // 110 µs from the store's hand-over to the notification at the median).
        for e in events.extract_if(.., |e| matches!(e, Event::Changed(_))) {
            if let Event::Changed(c) = e {
                self.shared.publish_change(c);
            }
        }
        let queued = self.shared.queued_frames();
        for t in frames {
            if let Some(link) = self.links.get(&t.to) {
                if statemesh_core::codec::is_view(&t.frame) {
                    let sealed = link.views.sender.as_deref();
                    pulse::send_view(&link.connection, sealed, &link.tx, queued, t.frame);
                    continue;
                }
                // Counted before it is sent: the writer counts it down once QUIC took it.
                queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if link.tx.send(t.frame).is_err() {
                    queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let mut unstored = None;
        for (p, report) in persists {
            match &self.writer {
                // Persists no local write waits for are not reported: a turn each, for nothing.
                Some(w) => w.write(p, report),
                // Persistence is off: nothing more will make these writes durable.
                None => unstored = Some(p.seq()),
            }
        }
        if let Some(seq) = unstored {
            let mut node = self.shared.node_off_worker();
            node.persisted(seq);
            ack_progress = node.ack_progress();
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            match e {
                Event::Changed(c) => self.shared.publish_change(c),
                Event::Replicated { after, .. } => {
                    self.shared.counts().propagation.record(after);
                }
                // The node keeps every write's acknowledgements (`Node::write_status`): their
                // waiters are woken below, from its progress.
                Event::Durable { .. } => {}
                Event::PeerDown { incarnation, cause } => {
                    tracing::info!(peer = %incarnation, ?cause, "peer down");
                    self.on_peer_down(incarnation, cause);
                }
                Event::PeerAddresses { from, peers } => self.on_peer_addresses(from, peers),
                Event::ViewRoute { from, route } => self.on_view_route(from, route),
                Event::ViewsHeard { from, route } => self.on_views_heard(from, route),
                Event::PeerUp(inc) => tracing::debug!(peer = %inc, "peer up"),
                Event::Leadership(l) => {
                    tracing::info!(leader = ?l.leader, term = ?l.term, "leadership")
                }
                Event::Elected { .. } | Event::Deposed { .. } | Event::Refuted(_) => {}
            }
        }
        self.shared.set_ack_progress(ack_progress);
        {
            let dialer = self.dialer.counts();
            let candidates = self.dialer.len();
            let mut counts = self.shared.counts();
            if let Some(live) = live {
                counts.links = live;
            }
            counts.probes = dialer.probes;
            counts.probe_failures = dialer.probe_failures;
            counts.candidates_forgotten = dialer.forgotten;
            counts.dial_candidates = candidates;
            counts.auth_failures_discovery = self.discoveries.auth_failures();
        }
        if let Some(leadership) = leadership {
            self.shared.publish_leadership(leadership);
        }
        // Last: whoever waits for `synced` then finds every change already broadcast.
        self.shared.set_synced(synced);
    }
}

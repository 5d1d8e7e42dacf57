//! The simulated network: frames, link changes and discovery delivered after random delays
//! (lost, duplicated, reordered), persists completing after their fsync delay, and the clock
//! stepping from one due event to the next.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Duration;

use rand_core::RngCore;

use super::Sim;
use super::config::JOB_TIME;
use crate::{LinkDown, Node, PeerId, Persist, SyncJob, Time};

pub(super) enum Delivery {
    Frame {
        from: PeerId,
        to: PeerId,
        /// Shared with the other deliveries of the same broadcast, as on a runtime's links.
        frame: bytes::Bytes,
        link_epoch: u64,
    },
    LinkDown {
        at: PeerId,
        peer: PeerId,
        how: LinkDown,
    },
    Connect {
        a: PeerId,
        b: PeerId,
    },
}

pub(super) struct Process {
    pub(super) node: Node,
    pub(super) frozen_until: Option<Time>,
    /// Persisted bytes, replayed into the next process of this slot on restart.
    pub(super) disk: Vec<Vec<u8>>,
    /// Persists written but not yet fsynced, in order, with when each completes.
    pub(super) inflight: VecDeque<(Time, Persist)>,
    /// The sync job out, and when it is done (see `SimConfig::jobs`).
    pub(super) job: Option<(SyncJob, Time)>,
    /// Frames that arrived while the job ran, in order: sender, frame, link epoch.
    pub(super) held: VecDeque<(PeerId, bytes::Bytes, u64)>,
}

impl Process {
    /// When the next in-flight persist completes (a stopped process completes nothing).
    fn next_persist(&self) -> Option<Time> {
        let (at, _) = self.inflight.front()?;
        Some(self.frozen_until.map_or(*at, |u| u.max(*at)))
    }

    /// When the sync job out is done (a stopped process runs nothing).
    fn next_job(&self) -> Option<Time> {
        let (_, at) = self.job.as_ref()?;
        Some(self.frozen_until.map_or(*at, |u| u.max(*at)))
    }

    /// Handles a frame as the runtime does (see `SimConfig::jobs`): held while a job runs,
    /// else handed to the node, which may start a job. Returns whether the node refused it.
    fn take_frame(&mut self, at: Time, from: PeerId, frame: bytes::Bytes, epoch: u64) -> bool {
        if self.job.is_some() {
            self.held.push_back((from, frame, epoch));
            return false;
        }
        let refused = match self.node.handle_frame_deferred(at, from, &frame) {
            Ok(Some(job)) => {
                self.job = Some((job, at + JOB_TIME));
                false
            }
            Ok(None) => false,
            Err(_) => true,
        };
        self.node.catch_up_standby();
        refused
    }

    /// The job out is done: it runs, its result joins the node, and the next job starts (its
    /// second round, a retry of a failed job's messages, or the frames held meanwhile, joined
    /// as long as they may). `live`: whether a held frame's link is still the one it came on.
    /// Returns how many frames the node refused, and adds to `jobs` (see `Sim::sync_jobs`).
    fn finish_job(
        &mut self,
        at: Time,
        live: impl Fn(PeerId, u64) -> bool,
        jobs: &mut (usize, usize),
    ) -> usize {
        let mut refused = 0;
        let Some((mut job, _)) = self.job.take() else {
            return 0;
        };
        jobs.0 += 1;
        if job.peers() > 1 {
            jobs.1 += 1;
        }
        job.run();
        match self.node.finish_sync(at, job) {
            Ok(Some(again)) => {
                self.job = Some((again, at + JOB_TIME));
                return 0;
            }
            Ok(None) => {}
            Err(_) => refused += 1,
        }
        if let Some(retry) = self.node.retry_job() {
            self.job = Some((retry, at + JOB_TIME));
            return refused;
        }
        while self.job.is_none()
            && let Some((from, frame, epoch)) = self.held.pop_front()
        {
            if !live(from, epoch) {
                continue;
            }
            match self.node.handle_frame_deferred(at, from, &frame) {
                Ok(Some(mut job)) => {
                    // The frames held join it while it takes them, as in the runtime.
                    while let Some((from, frame, epoch)) = self.held.front().cloned()
                        && job.takes(from, &frame)
                    {
                        self.held.pop_front();
                        if live(from, epoch)
                            && self.node.join_frame(at, &mut job, from, &frame).is_err()
                        {
                            refused += 1;
                        }
                    }
                    self.job = Some((job, at + JOB_TIME));
                }
                Ok(None) => {}
                Err(_) => refused += 1,
            }
        }
        self.node.catch_up_standby();
        refused
    }
}

/// Puts persisted bytes on a disk.
pub(super) fn store(disk: &mut Vec<Vec<u8>>, p: Persist) -> u64 {
    match p {
        Persist::Append { seq, bytes, .. } => {
            disk.push(bytes);
            seq
        }
        Persist::Snapshot { seq, bytes } => {
            *disk = vec![bytes.bytes().to_vec()];
            seq
        }
    }
}

impl Sim {
    pub(super) fn reachable(&self, a: PeerId, b: PeerId) -> bool {
        self.side.get(&a) == self.side.get(&b)
    }

    pub(super) fn connect(&mut self, a: PeerId, b: PeerId) {
        if !self.reachable(a, b) || self.links.contains_key(&key(a, b)) {
            return;
        }
        let (Some(sa), Some(sb)) = (self.ids.get(&a).copied(), self.ids.get(&b).copied()) else {
            return;
        };
        let (Some(ha), Some(hb)) = (
            self.procs.get(&sa).map(|p| p.node.hello()),
            self.procs.get(&sb).map(|p| p.node.hello()),
        ) else {
            return;
        };
        self.link_epoch += 1;
        self.links.insert(key(a, b), self.link_epoch);
        let now = self.now;
        if let Some(p) = self.procs.get_mut(&sa)
            && p.node.check_hello(&hb).is_ok()
        {
            p.node.handle_link_up(now, &hb);
        }
        if let Some(p) = self.procs.get_mut(&sb)
            && p.node.check_hello(&ha).is_ok()
        {
            p.node.handle_link_up(now, &ha);
        }
        self.drain(a);
        self.drain(b);
    }

    pub(super) fn disconnect(
        &mut self,
        a: PeerId,
        b: PeerId,
        how_a: Option<LinkDown>,
        how_b: Option<LinkDown>,
    ) {
        if self.links.remove(&key(a, b)).is_none() {
            return;
        }
        for (at, peer, how) in [(a, b, how_a), (b, a, how_b)] {
            if let Some(how) = how {
                let delay = self.delay();
                self.schedule(self.now + delay, Delivery::LinkDown { at, peer, how });
            }
        }
    }

    pub(super) fn delay(&mut self) -> Duration {
        let min = self.config.min_delay.as_micros() as u64;
        let max = self.config.max_delay.as_micros() as u64;
        Duration::from_micros(min + self.random(max.saturating_sub(min) + 1))
    }

    pub(super) fn schedule(&mut self, at: Time, d: Delivery) {
        self.seq += 1;
        self.pending.insert(self.seq, d);
        self.queue.push(Reverse((at, self.seq)));
    }

    /// Drains the outputs of peer `id`: frames onto the network, events into the log,
    /// persisted bytes onto its disk.
    pub(super) fn drain(&mut self, id: PeerId) {
        let Some(slot) = self.ids.get(&id).copied() else {
            return;
        };
        let now = self.now;
        let mut frames = Vec::new();
        let mut events = Vec::new();
        {
            let Some(p) = self.procs.get_mut(&slot) else {
                return;
            };
            while let Some(t) = p.node.poll_transmit() {
                frames.push(t);
            }
            while let Some(persist) = p.node.poll_persist() {
                let (min, max) = self.config.persist_delay;
                let (min, max) = (min.as_micros() as u64, max.as_micros() as u64);
                let d = min + self.disk_rng.next_u64() % (max.saturating_sub(min) + 1);
                let last = p.inflight.back().map_or(now, |(t, _)| *t);
                let done = last.max(now + Duration::from_micros(d));
                if self.config.bug_ack_before_fsync {
                    p.node.persisted(persist.seq());
                }
                p.inflight.push_back((done, persist));
            }
            while let Some(e) = p.node.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            self.observe(id, e);
        }
        for t in frames {
            let Some(epoch) = self.links.get(&key(id, t.to)).copied() else {
                continue;
            };
            if self.chance(self.config.drop) {
                continue;
            }
            let copies = if self.chance(self.config.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = self.delay();
                self.schedule(
                    now + d,
                    Delivery::Frame {
                        from: id,
                        to: t.to,
                        frame: t.frame.clone(),
                        link_epoch: epoch,
                    },
                );
            }
        }
    }

    pub(super) fn next_time(&self) -> Option<Time> {
        let net = self.queue.peek().map(|Reverse((t, _))| *t);
        let ticks = self
            .procs
            .values()
            .flat_map(|p| {
                let tick = match p.frozen_until {
                    Some(until) => until.max(p.node.poll_timeout()),
                    None => p.node.poll_timeout(),
                };
                [Some(tick), p.next_persist(), p.next_job()]
            })
            .flatten()
            .min();
        match (net, ticks) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| t.max(self.now))
    }

    pub(super) fn step_at(&mut self, at: Time) {
        self.now = at;
        // Wake frozen processes whose time has come.
        for p in self.procs.values_mut() {
            if p.frozen_until.is_some_and(|u| u <= at) {
                p.frozen_until = None;
            }
        }
        // Network deliveries due now.
        while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
            if t > at {
                break;
            }
            self.queue.pop();
            let Some(d) = self.pending.remove(&seq) else {
                continue;
            };
            let to = match &d {
                Delivery::Frame { to, .. } => *to,
                Delivery::LinkDown { at, .. } => *at,
                Delivery::Connect { a, b } => {
                    // Discovery found the peer: both are still running, or nothing happens.
                    let (a, b) = (*a, *b);
                    if self.ids.get(&a).is_some_and(|s| self.procs.contains_key(s))
                        && self.ids.get(&b).is_some_and(|s| self.procs.contains_key(s))
                    {
                        self.connect(a, b);
                    }
                    continue;
                }
            };
            let Some(slot) = self.ids.get(&to).copied() else {
                continue;
            };
            let frozen = self.procs.get(&slot).and_then(|p| p.frozen_until);
            if let Some(until) = frozen {
                // A stopped process reads nothing; the kernel keeps it queued.
                self.pending.insert(seq, d);
                self.queue.push(Reverse((until, seq)));
                continue;
            }
            let Some(p) = self.procs.get_mut(&slot) else {
                continue;
            };
            if p.node.me().peer != to {
                // For a process that crashed since: its slot runs another (a new peer id),
                // which never sees its predecessor's sockets.
                continue;
            }
            match d {
                Delivery::Frame {
                    from,
                    frame,
                    link_epoch,
                    ..
                } => {
                    // Frames of a link that has since closed are gone with it.
                    if self.links.get(&key(from, to)) != Some(&link_epoch)
                        && !self.closing.contains(&link_epoch)
                    {
                        continue;
                    }
                    let refused = if self.config.jobs {
                        p.take_frame(at, from, frame, link_epoch)
                    } else {
                        p.node.handle_frame(at, from, &frame).is_err()
                    };
                    if refused {
                        self.receive_errors += 1;
                    }
                }
                Delivery::LinkDown { peer, how, .. } => {
                    // The runtime reports the end of the link it had, never of a newer one.
                    if self.links.contains_key(&key(peer, to)) {
                        continue;
                    }
                    p.node.handle_link_down(at, peer, how);
                }
                Delivery::Connect { .. } => {}
            }
            self.drain(to);
        }
        // Sync jobs done now (see `SimConfig::jobs`).
        let (links, closing) = (&self.links, &self.closing);
        let mut finished = Vec::new();
        for p in self.procs.values_mut() {
            if p.frozen_until.is_none() && p.job.as_ref().is_some_and(|(_, t)| *t <= at) {
                let me = p.node.me().peer;
                let live = |from: PeerId, epoch: u64| {
                    links.get(&key(from, me)) == Some(&epoch) || closing.contains(&epoch)
                };
                self.receive_errors += p.finish_job(at, live, &mut self.sync_jobs);
                finished.push(me);
            }
        }
        for id in finished {
            self.drain(id);
        }
        // Persists whose fsync completes now: on disk, then the node is told.
        let done: Vec<PeerId> = self
            .procs
            .values_mut()
            .filter(|p| p.frozen_until.is_none())
            .filter_map(|p| {
                let mut any = false;
                while p.inflight.front().is_some_and(|(t, _)| *t <= at) {
                    let Some((_, persist)) = p.inflight.pop_front() else {
                        break;
                    };
                    let seq = store(&mut p.disk, persist);
                    p.node.persisted(seq);
                    any = true;
                }
                any.then(|| p.node.me().peer)
            })
            .collect();
        for id in done {
            self.drain(id);
        }
        // Ticks due now.
        let due: Vec<PeerId> = self
            .procs
            .values()
            .filter(|p| p.frozen_until.is_none() && p.node.poll_timeout() <= at)
            .map(|p| p.node.me().peer)
            .collect();
        for id in due {
            if let Some(slot) = self.ids.get(&id).copied()
                && let Some(p) = self.procs.get_mut(&slot)
            {
                p.node.handle_tick(at);
            }
            self.drain(id);
        }
        // The invariants checked after every step: no running peer holds live an incarnation it
        // judged dead, leads under a term older than the newest it knows, or shows a leader
        // record of another term.
        self.check_dead_stay_dead();
        self.check_terms();
    }
}

pub(super) fn key(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a < b { (a, b) } else { (b, a) }
}

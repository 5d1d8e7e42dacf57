//! What a mesh did since it joined: [`Mesh::metrics`](crate::Mesh::metrics).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counters and delays of one window's mesh, since it joined.
///
/// A diagnostic, not stable API: which counters exist and what they count may change in any
/// minor release (see the guide, "Which parts are stable"). Its JSON (`serde`) is what the
/// sidecar's `stats` answers under `mesh` and `statemesh status --json` prints as `metrics`;
/// delays are integers whose unit ends their name (`p99_us`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metrics {
    /// Times the leader (or its term) changed, as this window saw it.
    pub leadership_changes: u64,
    /// Automerge sync messages received.
    pub sync_in: u64,
    /// Automerge sync messages sent.
    pub sync_out: u64,
    /// Sync exchanges restarted after a stall.
    pub sync_resets: u64,
    /// Sync rounds a peer's view made owed: its document had differed from this window's for
    /// longer than the relay grace. Each write reaches every linked peer from its writer;
    /// these are the rounds on top (relays, and repairs of lost or confused exchanges).
    pub syncs_owed_by_views: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received in frames (headers included).
    pub bytes_in: u64,
    /// Bytes sent in frames.
    pub bytes_out: u64,
    /// Frames refused as malformed or oversize (each closed its link).
    pub decode_errors: u64,
    /// Connections refused for failing authentication (QUIC or local socket).
    pub auth_failures: u64,
    /// Dial attempts that failed (probes not counted).
    pub dial_failures: u64,
    /// Probes started: first contacts with unproven addresses, from a socket that carries no
    /// link (LAN mode; see `docs/architecture.md`, *Dialling*).
    pub probes: u64,
    /// Probes that failed (nobody answered, or the answer did not prove the mesh secret).
    pub probe_failures: u64,
    /// Addresses the dialler knows now (from discovery, static peers and peer exchange).
    pub dial_candidates: usize,
    /// Addresses forgotten after failing (never-proven mDNS candidates, learned addresses that
    /// stopped answering) or evicted beyond the candidate bound.
    pub candidates_forgotten: u64,
    /// Other peers of this mesh found by mDNS so far; `None` when mDNS is off.
    pub mdns_peers_found: Option<u64>,
    /// A problem with discovery that the user should know about (e.g. LAN mode found no peer
    /// by mDNS), with its likely cause and remedy; also logged once as a warning.
    pub discovery_warning: Option<String>,
    /// Links up now.
    pub links: usize,
    /// Links brought up since this window joined (a link dropped and set up again counts
    /// twice): what shows that no link was dropped, e.g. during a rotation of keys.
    pub links_opened: u64,
    /// This window's keyring, by key ids.
    pub keys: crate::KeyringInfo,
    /// The key (id) each linked peer proved with, by peer id.
    pub link_keys: std::collections::BTreeMap<String, String>,
    /// Links that proved again after a change of keys (see `docs/security.md`).
    pub key_renewals: u64,
    /// Renewed proofs that failed (the peer does not hold this window's primary key, or this
    /// window does not hold the peer's); a link whose key was removed and that failed to prove
    /// again is closed, and counted in `auth_failures`.
    pub key_renewal_failures: u64,
    /// Failures to persist state (after one, writes are no longer reported durable).
    pub persist_errors: u64,
    /// How long this window's writes took to be held by a peer: from the write until the
    /// peer's sync showed it has it, on this window's clock alone (a trip there and a trip
    /// back; no clocks are compared). Over the most recent [`DELAY_WINDOW`] samples.
    pub propagation: Delays,
    /// Times this window found its own ticks starved past the suspect timeout (frozen, or its
    /// runtime too busy to tick) and moved to a new incarnation.
    pub freezes: u64,
    /// Times this window learned it had been judged dead while alive (a false suspicion) and
    /// refuted it with a new incarnation.
    pub suspicions_refuted: u64,
    /// How late each heartbeat ran after it was due. Heartbeats run on a task of their own,
    /// apart from the driver's bulk work: what delays them is the node held by others (a
    /// writer, a job's result joining the document) and a starved runtime or CPU.
    pub tick_late: Delays,
    /// How long each turn of the driver took (one input handled, its outputs carried out).
    pub driver_turns: Delays,
    /// The backlog after the driver's last turn: entries changed by local writes that the
    /// live linked peers have not all acknowledged, plus frames queued to the links (see
    /// [`Mesh::backpressure`](crate::Mesh::backpressure)).
    pub backlog: usize,
    /// The largest backlog seen after a driver turn.
    pub backlog_peak: usize,
    /// Writes refused with [`WriteError::Backpressure`](crate::WriteError::Backpressure).
    pub writes_refused: u64,
    /// Heartbeat views dropped unread because newer ones filled their queue (a newer view of
    /// a peer supersedes an older one).
    pub views_dropped: u64,
    /// Views sent sealed beside the links' QUIC connections (see `docs/architecture.md`,
    /// "Sealed views").
    pub views_sealed_sent: u64,
    /// Sealed views received that opened (authentic, newer than the last on their link).
    pub views_sealed_received: u64,
    /// Datagrams on the view socket that did not open (forged, stale, for a closed link) and
    /// were dropped; nothing else comes of them.
    pub views_sealed_refused: u64,
}

/// How many recent delay samples the summaries cover.
pub const DELAY_WINDOW: usize = 1024;

/// A summary of recent delays, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delays {
    /// Samples taken since the mesh joined.
    pub samples: u64,
    /// Median of the recent samples.
    pub p50_us: u64,
    /// 99th percentile of the recent samples.
    pub p99_us: u64,
    /// Largest recent sample.
    pub max_us: u64,
}

/// The recent samples behind a [`Delays`].
#[derive(Debug, Default)]
pub(crate) struct DelaySamples {
    recent: VecDeque<u64>,
    total: u64,
}

impl DelaySamples {
    pub(crate) fn record(&mut self, d: Duration) {
        if self.recent.len() == DELAY_WINDOW {
            self.recent.pop_front();
        }
        self.recent
            .push_back(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.total += 1;
    }

    pub(crate) fn summary(&self) -> Delays {
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            if sorted.is_empty() {
                return 0;
            }
            let i = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted[i.min(sorted.len() - 1)]
        };
        Delays {
            samples: self.total,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: sorted.last().copied().unwrap_or(0),
        }
    }
}

/// What the driver counts (the node counts the rest).
#[derive(Debug, Default)]
pub(crate) struct DriverCounts {
    pub(crate) framing_errors: u64,
    pub(crate) auth_failures_quic: u64,
    pub(crate) auth_failures_discovery: u64,
    pub(crate) dial_failures: u64,
    pub(crate) probes: u64,
    pub(crate) probe_failures: u64,
    pub(crate) dial_candidates: usize,
    pub(crate) candidates_forgotten: u64,
    pub(crate) mdns_peers_found: Option<u64>,
    pub(crate) discovery_warning: Option<String>,
    pub(crate) links: usize,
    pub(crate) links_opened: u64,
    pub(crate) key_renewals: u64,
    pub(crate) key_renewal_failures: u64,
    pub(crate) persist_errors: u64,
    pub(crate) propagation: DelaySamples,
    pub(crate) tick_late: DelaySamples,
    pub(crate) driver_turns: DelaySamples,
    pub(crate) backlog: usize,
    pub(crate) backlog_peak: usize,
    pub(crate) writes_refused: u64,
    pub(crate) views_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_cover_the_recent_window() {
        let mut s = DelaySamples::default();
        assert_eq!(s.summary(), Delays::default());
        for us in 1..=100u64 {
            s.record(Duration::from_micros(us));
        }
        let d = s.summary();
        assert_eq!(
            (d.samples, d.p50_us, d.p99_us, d.max_us),
            (100, 51, 99, 100)
        );
        for _ in 0..DELAY_WINDOW {
            s.record(Duration::from_micros(7));
        }
        let d = s.summary();
        assert_eq!(d.samples, 100 + DELAY_WINDOW as u64);
        assert_eq!((d.p50_us, d.max_us), (7, 7));
    }
}

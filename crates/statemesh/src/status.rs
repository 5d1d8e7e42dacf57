//! Who leads and who is live, as a window sees it: [`Leadership`], [`Member`] and
//! [`Explanation`], the one public type of each concept. Their JSON (`serde`) is the one the
//! sidecar, `statemesh status --json` and the CLI's queries print: peer ids as strings,
//! durations as whole milliseconds in fields named `*_ms`, causes in `snake_case`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use statemesh_core::{DeathCause, PeerId, PeerStatus, Term};

/// Who leads, as this window sees it. `Default` is "nobody" (also what a closed mesh reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader, if any peer qualifies.
    pub leader: Option<PeerId>,
    /// The number of its term, once known. A term is the pair (number, leader): two leaders
    /// may have held the same number (they claimed at the same moment, or on two sides of a
    /// partition), never the same term. See [`Term`].
    pub term: Option<u64>,
    /// Whether this window leads under a known term.
    pub is_me: bool,
}

impl Leadership {
    /// The leader's term, once known.
    pub fn term_id(&self) -> Option<Term> {
        Some(Term::new(self.term?, self.leader?))
    }
}

/// One member of the mesh, as this window sees it.
///
/// JSON: `{"peer", "incarnation", "counter", "live", "eligible", "silent_for_ms", "death"}`,
/// `death` one of `"timeout"`, `"link_closed"`, `"left"` or `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// Its id.
    pub peer: PeerId,
    /// Its highest known incarnation.
    pub incarnation: u64,
    /// Its highest known heartbeat counter.
    pub counter: u64,
    /// Whether its highest known incarnation is live.
    pub live: bool,
    /// Whether it may lead.
    pub eligible: bool,
    /// Time since fresh news of it, on this machine's clock (zero for this window itself).
    #[serde(rename = "silent_for_ms", with = "millis")]
    pub silent_for: Duration,
    /// Why it was judged dead, if it was.
    #[serde(with = "death")]
    pub death: Option<DeathCause>,
}

impl Member {
    /// The member the node's liveness table shows as `p`.
    pub(crate) fn of(p: PeerStatus) -> Self {
        Self {
            peer: p.peer,
            incarnation: p.incarnation,
            counter: p.counter,
            live: p.live,
            eligible: p.eligible,
            silent_for: p.silent_for,
            death: p.death,
        }
    }
}

/// Why this window leads or not: the leadership, the terms seen, and every member's
/// freshness ([`Mesh::explain`](crate::Mesh::explain)). A diagnostic: its fields may change
/// between minor releases (see the guide, "Which parts are stable").
///
/// JSON: `{"me", "incarnation", "leader", "term", "is_me", "max_term", "max_term_leader",
/// "me_candidate", "peers"}` (the leadership's fields inline, `peers` as [`Member`]s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Explanation {
    /// This window.
    pub me: PeerId,
    /// This window's incarnation.
    pub incarnation: u64,
    /// The current leadership.
    #[serde(flatten)]
    pub leadership: Leadership,
    /// The greatest term number seen.
    pub max_term: u64,
    /// The leader of the newest term seen, when that term's number is `max_term`.
    pub max_term_leader: Option<PeerId>,
    /// Whether this window may claim leadership now (eligible and past its join grace).
    pub me_candidate: bool,
    /// Every known member, this window first.
    pub peers: Vec<Member>,
}

impl Explanation {
    /// The explanation of the node's `x`, where this window's own term is `my_term`.
    pub(crate) fn new(x: statemesh_core::Explanation, my_term: Option<u64>) -> Self {
        let max_term_leader = x.max_term_leader();
        let leader = x.leadership.leader;
        Self {
            me: x.me.peer,
            incarnation: x.me.number,
            leadership: Leadership {
                leader,
                term: x.leadership.term,
                is_me: leader == Some(x.me.peer)
                    && my_term.is_some()
                    && my_term == x.leadership.term,
            },
            max_term: x.max_term,
            max_term_leader,
            me_candidate: x.me_candidate,
            peers: x.peers.into_iter().map(Member::of).collect(),
        }
    }
}

/// A [`Duration`] as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A [`DeathCause`] in `snake_case`.
mod death {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use statemesh_core::DeathCause;

    fn name(c: DeathCause) -> &'static str {
        match c {
            DeathCause::Timeout => "timeout",
            DeathCause::LinkClosed => "link_closed",
            DeathCause::Left => "left",
        }
    }

    pub(super) fn serialize<S: Serializer>(
        c: &Option<DeathCause>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_some(name(*c)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DeathCause>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        [
            DeathCause::Timeout,
            DeathCause::LinkClosed,
            DeathCause::Left,
        ]
        .into_iter()
        .find(|c| name(*c) == text)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("unknown death cause {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_renders_durations_as_whole_milliseconds_and_causes_in_snake_case() {
        let peer: PeerId = "01890a5d-ac96-774b-bcce-b302099a8057"
            .parse()
            .expect("as set up");
        let m = Member {
            peer,
            incarnation: 2,
            counter: 9,
            live: false,
            eligible: true,
            silent_for: Duration::from_micros(1_500_900),
            death: Some(DeathCause::LinkClosed),
        };
        let json = serde_json::to_value(&m).expect("as set up");
        assert_eq!(
            json,
            serde_json::json!({
                "peer": "01890a5d-ac96-774b-bcce-b302099a8057",
                "incarnation": 2,
                "counter": 9,
                "live": false,
                "eligible": true,
                "silent_for_ms": 1500,
                "death": "link_closed",
            })
        );
        let back: Member = serde_json::from_value(json).expect("as set up");
        assert_eq!(back.silent_for, Duration::from_millis(1500));
        assert_eq!(back.death, Some(DeathCause::LinkClosed));
        assert!(
            serde_json::from_value::<Member>(serde_json::json!({
                "peer": "01890a5d-ac96-774b-bcce-b302099a8057", "incarnation": 0, "counter": 0,
                "live": true, "eligible": true, "silent_for_ms": 0, "death": "eaten",
            }))
            .is_err()
        );
    }
}

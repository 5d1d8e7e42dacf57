//! The decode of the message received most often: a [`View`], 63 of them every heartbeat at
//! each window of a 64-window mesh, all at the same instant.
//!
//! It reads exactly postcard's encoding of `Message::View` (the format in the parent module's
//! docs): no other format, nothing new on the wire. It only takes the common case and leaves
//! the rest to postcard: a payload it does not take whole (another message, a variant or a
//! length written in more bytes than needed but still valid, a field postcard would refuse,
//! bytes left over) returns `None`, and the caller decodes it with postcard, which then says
//! what is wrong with it. So whatever this function returns, postcard decodes the same payload
//! to the same view; the codec's tests and the `frame_decode` fuzz target check that.
//!
//! Measured (criterion `codec/decode_view_64_peers` and `decode_view_9_peers`, release, the
//! 2-core machine of docs/under-load.md's thirty-first slice): a view of 64 beats 1.49 µs
//! through postcard and serde, 0.66 µs here; of 9 beats 332 ns, 135 ns. In the idle 64-window
//! mesh the decode of views took 9 % of the busy CPU (a sixth of the heartbeat threads'), 3 %
//! with this decoder.

use super::View;
use crate::PeerId;
use crate::liveness::{DeathCause, GossipBeat, Tombstone};
use crate::vv::Beat;

/// `Message::View`'s variant number, a one-byte varint.
const VIEW_VARIANT: u8 = 1;

/// The fewest bytes an entry of each list takes: a peer id (its length, 16, then 16 bytes)
/// and, for a beat, two one-byte varints and a bool; for a tombstone, a varint and a cause;
/// for a claim, a varint. A list's length is trusted for an allocation only up to the
/// entries the bytes left can hold.
const MIN_BEAT: usize = 17 + 3;
const MIN_TOMB: usize = 17 + 2;
const MIN_CLAIM: usize = 17 + 1;

/// The view a payload holds, if it is one this decoder takes (see the module docs); `None`
/// otherwise, for postcard to decode.
pub(super) fn decode(payload: &[u8]) -> Option<View> {
    let (&VIEW_VARIANT, mut rest) = payload.split_first()? else {
        return None;
    };
    let r = &mut rest;
    let n = length(r, MIN_BEAT)?;
    let mut beats = Vec::with_capacity(n);
    for _ in 0..n {
        let peer = peer(r)?;
        let beat = Beat {
            incarnation: varint(r)?,
            counter: varint(r)?,
        };
        let eligible = match take(r)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        beats.push(GossipBeat {
            peer,
            beat,
            eligible,
        });
    }
    let n = length(r, MIN_TOMB)?;
    let mut tombs = Vec::with_capacity(n);
    for _ in 0..n {
        let peer = peer(r)?;
        let incarnation = varint(r)?;
        let cause = match take(r)? {
            0 => DeathCause::Timeout,
            1 => DeathCause::LinkClosed,
            2 => DeathCause::Left,
            _ => return None,
        };
        tombs.push((peer, Tombstone { incarnation, cause }));
    }
    let n = length(r, MIN_CLAIM)?;
    let mut claims = Vec::with_capacity(n);
    for _ in 0..n {
        claims.push((peer(r)?, varint(r)?));
    }
    let doc = array(r)?;
    let leader = array(r)?;
    if !r.is_empty() {
        return None;
    }
    Some(View {
        beats,
        tombs,
        claims,
        doc,
        leader,
    })
}

/// One byte.
fn take(r: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = r.split_first()?;
    *r = rest;
    Some(b)
}

/// A list's length, which the bytes left must be able to hold at `min` bytes an entry.
fn length(r: &mut &[u8], min: usize) -> Option<usize> {
    let n = usize::try_from(varint(r)?).ok()?;
    (n <= r.len() / min).then_some(n)
}

/// A `u64` as postcard reads it: seven bits a byte, low bits first, at most ten bytes, the
/// tenth at most 1.
fn varint(r: &mut &[u8]) -> Option<u64> {
    let mut out = 0u64;
    for i in 0..10 {
        let b = take(r)?;
        out |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (i < 9 || b <= 1).then_some(out);
        }
    }
    None
}

/// A peer id: a UUID as bytes (its length, 16, then the 16 bytes), of version 7.
fn peer(r: &mut &[u8]) -> Option<PeerId> {
    if take(r)? != 16 {
        return None;
    }
    let bytes: [u8; 16] = array(r)?;
    PeerId::from_uuid(uuid::Uuid::from_bytes(bytes)).ok()
}

/// `N` raw bytes.
fn array<const N: usize>(r: &mut &[u8]) -> Option<[u8; N]> {
    let (bytes, rest) = r.split_first_chunk::<N>()?;
    *r = rest;
    Some(*bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{HEADER_LEN, Message, decode_frame, decode_postcard, encode_frame};

    /// A version 7 peer id from any 16 bytes.
    fn peer_from(mut b: [u8; 16]) -> PeerId {
        b[6] = (b[6] & 0x0f) | 0x70;
        b[8] = (b[8] & 0x3f) | 0x80;
        PeerId::from_uuid(uuid::Uuid::from_bytes(b)).expect("a version 7 id")
    }

    fn view() -> impl Strategy<Value = View> {
        let beats = proptest::collection::vec(
            (any::<[u8; 16]>(), any::<u64>(), any::<u64>(), any::<bool>()),
            1..70,
        );
        let tombs = proptest::collection::vec((any::<[u8; 16]>(), any::<u64>(), 0..3u8), 0..5);
        let claims = proptest::collection::vec((any::<[u8; 16]>(), any::<u64>()), 0..5);
        (beats, tombs, claims, any::<[u8; 8]>(), any::<[u8; 8]>()).prop_map(
            |(beats, tombs, claims, doc, leader)| View {
                beats: beats
                    .into_iter()
                    .map(|(p, incarnation, counter, eligible)| GossipBeat {
                        peer: peer_from(p),
                        beat: Beat {
                            incarnation,
                            counter,
                        },
                        eligible,
                    })
                    .collect(),
                tombs: tombs
                    .into_iter()
                    .map(|(p, incarnation, cause)| {
                        let cause = [
                            DeathCause::Timeout,
                            DeathCause::LinkClosed,
                            DeathCause::Left,
                        ][usize::from(cause)];
                        (peer_from(p), Tombstone { incarnation, cause })
                    })
                    .collect(),
                claims: claims.into_iter().map(|(p, t)| (peer_from(p), t)).collect(),
                doc,
                leader,
            },
        )
    }

    /// The payload postcard makes of `view`.
    fn payload(view: &View) -> Vec<u8> {
        let frame = encode_frame(&Message::View(view.clone()), usize::MAX).expect("encodes");
        frame[HEADER_LEN..].to_vec()
    }

    proptest! {
        /// Every view as postcard encodes it is taken, and decodes to itself.
        #[test]
        fn every_encoded_view_is_taken_whole(view in view()) {
            let payload = payload(&view);
            prop_assert_eq!(decode(&payload), Some(view.clone()));
            prop_assert_eq!(decode_postcard(&payload), Ok(Message::View(view)));
        }

        /// Whatever this decoder takes from a damaged view (bytes changed, cut off or
        /// added), postcard decodes to the same view; what postcard refuses, it does not take.
        #[test]
        fn what_it_takes_postcard_decodes_alike(
            view in view(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut payload = payload(&view);
            for (at, byte) in flips {
                let at = at % payload.len();
                payload[at] = byte;
            }
            payload.truncate(payload.len() - cut % 4);
            payload.extend_from_slice(&extra);
            if let Some(fast) = decode(&payload) {
                prop_assert_eq!(decode_postcard(&payload), Ok(Message::View(fast)));
            }
        }
    }

    /// A view whose one beat's counter is ten bytes long: postcard takes a tenth byte of 0 or
    /// 1 (the top bit of the `u64`) and refuses more, and so does the decode of a frame.
    #[test]
    fn a_tenth_varint_byte_over_one_is_refused_as_postcard_refuses_it() {
        let id = peer_from([7; 16]);
        let mut payload = vec![VIEW_VARIANT, 1, 16];
        payload.extend_from_slice(&id.to_bytes());
        payload.push(0); // incarnation
        let counter = payload.len();
        payload.extend_from_slice(&[0xff; 9]);
        payload.push(0x01);
        payload.extend_from_slice(&[1, 0, 0]); // eligible, no tombs, no claims
        payload.extend_from_slice(&[0; 16]); // digests
        let taken = decode(&payload).expect("a tenth byte of 1 is taken");
        assert_eq!(taken.beats[0].beat.counter, u64::MAX);
        assert_eq!(decode_postcard(&payload), Ok(Message::View(taken)));
        payload[counter + 9] = 0x02;
        assert_eq!(decode(&payload), None);
        assert!(decode_postcard(&payload).is_err());
        let frame = crate::codec::frame_raw(&payload);
        assert!(decode_frame(&frame, usize::MAX).is_err());
    }

    /// Valid encodings this decoder leaves to postcard (a length written in two bytes, the
    /// variant in two) still decode, through postcard, to the same view.
    #[test]
    fn encodings_left_to_postcard_still_decode() {
        let view = View {
            beats: vec![GossipBeat {
                peer: peer_from([3; 16]),
                beat: Beat {
                    incarnation: 1,
                    counter: 2,
                },
                eligible: true,
            }],
            tombs: vec![],
            claims: vec![],
            doc: [1; 8],
            leader: [2; 8],
        };
        let plain = payload(&view);
        assert_eq!(&plain[..3], &[VIEW_VARIANT, 1, 16]);
        let long_id = [&plain[..2], &[0x90, 0x00], &plain[3..]].concat();
        let long_variant = [&[0x81, 0x00], &plain[1..]].concat();
        for payload in [long_id, long_variant] {
            assert_eq!(decode(&payload), None);
            let frame = crate::codec::frame_raw(&payload);
            assert_eq!(
                decode_frame(&frame, usize::MAX),
                Ok(Message::View(view.clone()))
            );
        }
    }
}

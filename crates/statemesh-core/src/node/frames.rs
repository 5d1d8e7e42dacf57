//! Frames received: checked and decoded, a sync message applied in place (or, by
//! [`Node::handle_frame_deferred`], handed to a job), every other message handled at once.

use super::{Event, Node, ReceiveError};
use crate::codec::{self, Message};
use crate::replica::{EntryChange, EntryKind, Replica};
use crate::{PeerId, Time};

impl Node {
    /// Handles one frame received from `from`, whole, header included, as it came off the
    /// wire (a runtime cuts its stream into frames with [`codec::FrameDecoder`]). A frame whose
    /// header is wrong (too short, over the frame limit, announcing another length than it
    /// holds) or whose message does not decode is refused with [`ReceiveError::Decode`] and
    /// changes nothing. A sync message carrying changes is applied at once, to the document
    /// itself: a message that fails (or makes the CRDT library panic) is undone from the
    /// replica's standby copy, at a cost proportional to the message, not to the document
    /// ([`Replica::receive_sync`]).
    pub fn handle_frame(
        &mut self,
        now: Time,
        from: PeerId,
        frame: &[u8],
    ) -> Result<(), ReceiveError> {
        match self.sync_message_of(now, from, frame)? {
            Some(message) => self.receive_in_place(now, from, message),
            None => Ok(()),
        }
    }

    /// Handles one frame received from `from` up to its sync message: any other message is
    /// handled here (`None`), a sync message of a linked peer is returned decoded.
    pub(super) fn sync_message_of(
        &mut self,
        now: Time,
        from: PeerId,
        frame: &[u8],
    ) -> Result<Option<automerge::sync::Message>, ReceiveError> {
        let message = self.decode_frame(frame)?;
        let Message::Sync(bytes) = message else {
            return self.handle_message(now, from, message).map(|()| None);
        };
        self.advance(now);
        if !self.links.contains_key(&from) {
            return Err(ReceiveError::NoLink(from));
        }
        let decoded =
            Replica::decode_sync(&bytes).inspect_err(|_| self.stats.decode_errors += 1)?;
        Ok(Some(decoded))
    }

    /// Applies a decoded sync message of linked peer `from` to the document itself (the
    /// replica's standby undoes one that fails) and answers it.
    pub(super) fn receive_in_place(
        &mut self,
        now: Time,
        from: PeerId,
        message: automerge::sync::Message,
    ) -> Result<(), ReceiveError> {
        let Some(link) = self.links.get_mut(&from) else {
            return Err(ReceiveError::NoLink(from));
        };
        let carried = message.changes.len();
        let before = self
            .replica
            .receive_decoded(&mut link.sync, message)
            .inspect_err(|_| self.stats.decode_errors += 1)?;
        // A message that carried changes had the local writes left open committed first.
        self.claim_settled();
        // The entries the message touched, found while it was checked.
        let changes = if carried > 0 {
            self.replica.touched_since(&before)
        } else {
            Vec::new()
        };
        self.after_sync(now, from, before, changes, carried > 0);
        // The standby lacks the message's changes (see `Replica::receive_decoded`).
        self.standby_owed += carried;
        Ok(())
    }

    /// Checks and decodes one frame received from `from`, counting it.
    fn decode_frame(&mut self, frame: &[u8]) -> Result<Message, ReceiveError> {
        self.stats.bytes_in += frame.len() as u64;
        self.stats.frames_in += 1;
        let message = codec::decode_frame(frame, self.config.max_frame)
            .inspect_err(|_| self.stats.decode_errors += 1)?;
        Ok(message)
    }

    /// Handles one decoded message received from `from`, except a sync message (see
    /// [`handle_frame_deferred`](Self::handle_frame_deferred)).
    fn handle_message(
        &mut self,
        now: Time,
        from: PeerId,
        message: Message,
    ) -> Result<(), ReceiveError> {
        self.advance(now);
        if !self.links.contains_key(&from) {
            return Err(ReceiveError::NoLink(from));
        }
        match message {
            Message::Hello(_) => return Err(ReceiveError::UnexpectedHello),
            Message::View(view) => {
                self.heart().on_view(now, from, view);
                self.absorb();
            }
            Message::Leave(inc) => {
                self.heart().on_leave(now, inc);
                self.absorb();
            }
            // Taken by `handle_frame_deferred` before it calls this.
            Message::Sync(_) => {}
            Message::Peers(peers) => {
                self.events.push_back(Event::PeerAddresses { from, peers });
            }
            Message::ViewRoute(route) => {
                self.events.push_back(Event::ViewRoute { from, route });
            }
            Message::ViewsHeard(route) => {
                self.events.push_back(Event::ViewsHeard { from, route });
            }
            Message::Leader(records) => {
                let mut heart = self.heart.lock();
                for r in records {
                    let change = EntryChange {
                        kind: EntryKind::Leader,
                        channel: r.channel.clone(),
                        key: r.key.clone(),
                        by: Some(r.writer),
                    };
                    let writer_known_dead = heart.live.incarnation_of(&r.writer).is_some()
                        && !heart.live.is_live(&r.writer);
                    if writer_known_dead {
                        continue;
                    }
                    // A record is proof that its writer led under its term: known from now on,
                    // even before the writer's claim arrives in a view.
                    heart.election.observe(crate::leader_records::term_of(&r));
                    if self.leader.merge(r) {
                        self.events.push_back(Event::Changed(change));
                    }
                }
                heart.reelect(now);
                drop(heart);
                self.publish_digests();
                self.absorb();
            }
        }
        Ok(())
    }
}

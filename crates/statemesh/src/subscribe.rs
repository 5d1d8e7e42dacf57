//! Subscriptions, as streams: [`ChangeStream`] ([`Mesh::changes`](crate::Mesh::changes)) and
//! [`LeadershipStream`] ([`Mesh::leadership`](crate::Mesh::leadership)). Both implement
//! [`futures_core::Stream`] (use `futures::StreamExt`, `tokio_stream::StreamExt` or their
//! inherent `recv`), and both end once the mesh shuts down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use statemesh_core::EntryChange;
use tokio::sync::{broadcast, watch};

use crate::status::Leadership;

/// A change as the mesh's broadcast keeps it: shared, so that each of the 4,096 slots the
/// broadcast allocates up front holds a pointer, not a whole change (the slots were 96 bytes
/// each, 393 kB resident per window; now 40). A subscriber takes the change out, or a copy
/// when another subscriber still holds it.
pub(crate) type Published = Arc<EntryChange>;

/// Changes were dropped because the subscriber read too slowly: `missed` changes (the oldest)
/// are gone. Whatever a subscriber shows from the mesh, it should read it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{missed} changes were missed (the subscriber fell behind): read again what you show")]
pub struct Lagged {
    /// How many changes were missed.
    pub missed: u64,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a [`ChangeStream`] waits on between items.
type ChangeWait = Boxed<(
    Option<Result<EntryChange, Lagged>>,
    Receivers<broadcast::Receiver<Published>>,
)>;

/// A subscription's receivers: the values, and whether the mesh is closed.
struct Receivers<T> {
    values: T,
    closed: watch::Receiver<bool>,
}

/// The changes of a mesh, as they happen: which channel and key, written by whom
/// ([`Change`](crate::Change)); read the entry to see its value. Yields `Err(`[`Lagged`]`)`
/// when the subscriber fell more than 4,096 changes behind (the missed ones are gone: read
/// again what you show), and ends (`None`) once the mesh is shut down and every change
/// published before was yielded.
pub struct ChangeStream {
    state: ChangeState,
}

enum ChangeState {
    Idle(Receivers<broadcast::Receiver<Published>>),
    Waiting(ChangeWait),
    Done,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("done", &matches!(self.state, ChangeState::Done))
            .finish_non_exhaustive()
    }
}

impl ChangeStream {
    pub(crate) fn new(
        values: broadcast::Receiver<Published>,
        closed: watch::Receiver<bool>,
    ) -> Self {
        Self {
            state: ChangeState::Idle(Receivers { values, closed }),
        }
    }

    /// The next change; `None` once the mesh is shut down (what `StreamExt::next` does,
    /// without an extension trait).
    pub async fn recv(&mut self) -> Option<Result<EntryChange, Lagged>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next change if one is there now, without waiting (for code that is not async: a UI
    /// thread polling once a frame); `None` when there is none now, or the stream ended.
    pub fn try_recv(&mut self) -> Option<Result<EntryChange, Lagged>> {
        match &mut self.state {
            ChangeState::Idle(r) => queued(&mut r.values),
            ChangeState::Waiting(_) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match Pin::new(self).poll_next(&mut cx) {
                    Poll::Ready(item) => item,
                    Poll::Pending => None,
                }
            }
            ChangeState::Done => None,
        }
    }
}

/// The next change already queued, if any (see [`ChangeStream::try_recv`]).
fn queued(values: &mut broadcast::Receiver<Published>) -> Option<Result<EntryChange, Lagged>> {
    match values.try_recv() {
        Ok(c) => Some(Ok(Arc::unwrap_or_clone(c))),
        Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Err(Lagged { missed })),
        Err(_) => None,
    }
}

/// Waits for the next change, or for the mesh to close (then yields what is still queued).
async fn next_change(
    mut r: Receivers<broadcast::Receiver<Published>>,
) -> (
    Option<Result<EntryChange, Lagged>>,
    Receivers<broadcast::Receiver<Published>>,
) {
    let from = |e| match e {
        broadcast::error::RecvError::Lagged(missed) => Some(Err(Lagged { missed })),
        broadcast::error::RecvError::Closed => None,
    };
    let received = tokio::select! {
        biased;
        c = r.values.recv() => Some(c.map_or_else(from, |c| Some(Ok(Arc::unwrap_or_clone(c))))),
        _ = r.closed.wait_for(|closed| *closed) => None,
    };
    let item = match received {
        Some(item) => item,
        // Closed: what was published before still comes, then the end.
        None => queued(&mut r.values),
    };
    (item, r)
}

impl Stream for ChangeStream {
    type Item = Result<EntryChange, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::mem::replace(&mut self.state, ChangeState::Done) {
                ChangeState::Done => return Poll::Ready(None),
                ChangeState::Idle(r) => {
                    self.state = ChangeState::Waiting(Box::pin(next_change(r)));
                }
                ChangeState::Waiting(mut wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = ChangeState::Waiting(wait);
                        return Poll::Pending;
                    }
                    Poll::Ready((item, r)) => {
                        if item.is_some() {
                            self.state = ChangeState::Idle(r);
                        }
                        return Poll::Ready(item);
                    }
                },
            }
        }
    }
}

/// The leadership as this window sees it: the current snapshot first, then a new snapshot at
/// each change (snapshots, not events: a reader that falls behind sees the newest, never a
/// backlog). [`current`](Self::current) reads the newest without waiting. Ends once the mesh
/// is shut down, after a last snapshot of "nobody leads".
pub struct LeadershipStream {
    /// For [`current`](Self::current), whatever the stream waits on.
    peek: watch::Receiver<Leadership>,
    state: LeadershipState,
}

enum LeadershipState {
    Idle(Receivers<watch::Receiver<Leadership>>),
    Waiting(Boxed<(Option<Leadership>, Receivers<watch::Receiver<Leadership>>)>),
    Done,
}

impl std::fmt::Debug for LeadershipStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadershipStream")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl LeadershipStream {
    pub(crate) fn new(
        mut values: watch::Receiver<Leadership>,
        closed: watch::Receiver<bool>,
    ) -> Self {
        // The current snapshot is the first item.
        values.mark_changed();
        Self {
            peek: values.clone(),
            state: LeadershipState::Idle(Receivers { values, closed }),
        }
    }

    /// The newest snapshot, now (cheap: no wait, no clone of anything but the snapshot).
    pub fn current(&self) -> Leadership {
        *self.peek.borrow()
    }

    /// The next snapshot; `None` once the mesh is shut down.
    pub async fn recv(&mut self) -> Option<Leadership> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

/// Waits for a snapshot not yet yielded, or for the mesh to close.
async fn next_leadership(
    mut r: Receivers<watch::Receiver<Leadership>>,
) -> (Option<Leadership>, Receivers<watch::Receiver<Leadership>>) {
    let changed = tokio::select! {
        biased;
        c = r.values.changed() => c.is_ok(),
        _ = r.closed.wait_for(|closed| *closed) => r.values.has_changed().unwrap_or(false),
    };
    let item = changed.then(|| *r.values.borrow_and_update());
    (item, r)
}

impl Stream for LeadershipStream {
    type Item = Leadership;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::mem::replace(&mut self.state, LeadershipState::Done) {
                LeadershipState::Done => return Poll::Ready(None),
                LeadershipState::Idle(r) => {
                    self.state = LeadershipState::Waiting(Box::pin(next_leadership(r)));
                }
                LeadershipState::Waiting(mut wait) => match wait.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = LeadershipState::Waiting(wait);
                        return Poll::Pending;
                    }
                    Poll::Ready((item, r)) => {
                        if item.is_some() {
                            self.state = LeadershipState::Idle(r);
                        }
                        return Poll::Ready(item);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str) -> EntryChange {
        EntryChange {
            kind: statemesh_core::EntryKind::Record,
            channel: "c".into(),
            key: key.into(),
            by: None,
        }
    }

    #[tokio::test]
    async fn changes_report_lag_then_go_on_and_end_after_the_close() {
        let (tx, rx) = broadcast::channel(2);
        let (closed, closed_rx) = watch::channel(false);
        let mut s = ChangeStream::new(rx, closed_rx);
        for k in ["a", "b", "c", "d"] {
            tx.send(Arc::new(change(k))).expect("as set up");
        }
        assert_eq!(s.recv().await, Some(Err(Lagged { missed: 2 })));
        assert_eq!(
            s.recv().await.expect("as set up").expect("as set up").key,
            "c"
        );
        assert_eq!(
            s.recv().await.expect("as set up").expect("as set up").key,
            "d"
        );
        tx.send(Arc::new(change("e"))).expect("as set up");
        closed.send_replace(true);
        // Published before the close: still yielded; then the end, for good.
        assert_eq!(
            s.recv().await.expect("as set up").expect("as set up").key,
            "e"
        );
        assert_eq!(s.recv().await, None);
        let _ = tx.send(Arc::new(change("f")));
        assert_eq!(s.recv().await, None);
        assert_eq!(s.try_recv(), None);
    }

    #[tokio::test]
    async fn try_recv_takes_what_is_there_without_waiting() {
        let (tx, rx) = broadcast::channel(8);
        let (_closed, closed_rx) = watch::channel(false);
        let mut s = ChangeStream::new(rx, closed_rx);
        assert_eq!(s.try_recv(), None);
        // A wait under way (its future owns the receiver) is taken over too.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(1), s.recv()).await;
        assert!(waited.is_err());
        tx.send(Arc::new(change("a"))).expect("as set up");
        tx.send(Arc::new(change("b"))).expect("as set up");
        assert_eq!(
            s.try_recv().expect("as set up").expect("as set up").key,
            "a"
        );
        assert_eq!(
            s.try_recv().expect("as set up").expect("as set up").key,
            "b"
        );
        assert_eq!(s.try_recv(), None);
    }

    #[tokio::test]
    async fn leadership_starts_with_the_current_snapshot_and_ends_after_the_close() {
        let (tx, rx) = watch::channel(Leadership::default());
        let (closed, closed_rx) = watch::channel(false);
        let me: statemesh_core::PeerId = "01890a5d-ac96-774b-bcce-b302099a8057"
            .parse()
            .expect("as set up");
        let led = Leadership {
            leader: Some(me),
            term: Some(3),
            is_me: true,
        };
        tx.send_replace(led);
        let mut s = LeadershipStream::new(rx, closed_rx);
        assert_eq!(s.current(), led);
        assert_eq!(s.recv().await, Some(led), "the current snapshot first");
        // Snapshots, not events: two changes before a read are one item, the newest.
        tx.send_replace(Leadership::default());
        let led4 = Leadership {
            term: Some(4),
            ..led
        };
        tx.send_replace(led4);
        assert_eq!(s.current(), led4);
        assert_eq!(s.recv().await, Some(led4));
        tx.send_replace(Leadership::default());
        closed.send_replace(true);
        assert_eq!(
            s.recv().await,
            Some(Leadership::default()),
            "the last snapshot"
        );
        assert_eq!(s.recv().await, None);
    }
}

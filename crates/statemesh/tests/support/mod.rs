//! What the tests of several windows in one process share.

use std::time::Duration;

use statemesh::Mesh;

/// A generous safety net; the events themselves take milliseconds.
pub(crate) const WITHIN: Duration = Duration::from_secs(15);

/// Waits until `check` holds on `mesh`, re-checking on every change it sees.
pub(crate) async fn until(mesh: &Mesh, what: &str, check: impl Fn(&Mesh) -> bool) {
    let mut changes = mesh.changes();
    let wait = async {
        while !check(mesh) {
            let _ = changes.recv().await;
        }
    };
    tokio::time::timeout(WITHIN, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not reached"));
}

//! The UDP socket under a QUIC endpoint: one datagram per receive slot.
//!
//! quinn sizes an endpoint's receive buffer for the largest train of datagrams the kernel may
//! coalesce into one receive (generic receive offload, which quinn turns on where it can): 64
//! segments of 1,472 bytes in each of its 32 slots, 2.9 MB per endpoint. The buffer is zeroed
//! memory the kernel maps on first touch; each coalesced train touches more of it, and nothing
//! gives it back. Measured resident in the windows of the benchmarks (4 windows, loopback):
//! 28-64 kB after `memory`, 128-176 kB after a `throughput` run, 176-280 kB after 30 s of
//! `overload`; a NIC that coalesces more, or a longer burst, takes it further, up to the whole.
//!
//! statemesh's links carry small frames (views travel beside them; a sync message is rarely more
//! than a few datagrams), so on Linux the endpoint's socket turns offload off again and tells
//! quinn it receives one datagram per slot: a 47 kB buffer, whatever the traffic. A coalesced
//! train sent to this socket by a peer's segmentation offload is split by the kernel into
//! datagrams, which `recvmmsg` still takes 32 at a time (no measurable change in `throughput`,
//! `overload`, `propagation` or `scale`). Where offload cannot be turned off (or off Linux,
//! where quinn never turns it on) the socket is quinn's own.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use quinn::{AsyncUdpSocket, Runtime};

/// Wraps `socket` for quinn's `runtime`, with receive offload off where that is possible.
pub(crate) fn wrap(
    socket: UdpSocket,
    runtime: &Arc<dyn Runtime>,
) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
    #[cfg(target_os = "linux")]
    {
        // quinn-udp turns offload on while it wraps the socket; a second handle on the same
        // socket turns it off after.
        let handle = socket.try_clone()?;
        let inner = runtime.wrap_udp_socket(socket)?;
        match nix::sys::socket::setsockopt(
            &handle,
            nix::sys::socket::sockopt::UdpGroSegment,
            &false,
        ) {
            Ok(()) => Ok(Arc::new(OneSegment(inner))),
            Err(e) => {
                tracing::debug!(error = %e, "receive offload stays on: quinn's receive buffer");
                Ok(inner)
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        runtime.wrap_udp_socket(socket)
    }
}

/// A socket that receives one datagram per slot (offload off); everything else is quinn's.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct OneSegment(Arc<dyn AsyncUdpSocket>);

#[cfg(target_os = "linux")]
impl AsyncUdpSocket for OneSegment {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wrapped_socket_has_offload_off_and_receives_one_datagram_per_slot() {
        let runtime: Arc<dyn Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let handle = socket.try_clone().expect("clone");
        let wrapped = wrap(socket, &runtime).expect("wrap");
        assert_eq!(wrapped.max_receive_segments(), 1);
        let on = nix::sys::socket::getsockopt(&handle, nix::sys::socket::sockopt::UdpGroSegment)
            .expect("read the option");
        assert!(!on, "receive offload is still on");
    }
}

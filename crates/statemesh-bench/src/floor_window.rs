//! A window of the `transport-floor` scenario (`window --transport-floor`): the process, the
//! runtime and the links of a real window, without the mesh.
//!
//! It binds statemesh's QUIC endpoint on loopback (the same TLS, ALPN and secret-based
//! authentication as [`statemesh::Mesh`]'s links), dials the addresses the harness gives it,
//! and on `stamp {key}` writes one small frame (the key and its `CLOCK_MONOTONIC` reading) to
//! every link. Each link's reader hands received frames to the window's application task, which
//! prints `{"ev":"seen","key":K,"delay_ns":D}` as a mesh window does when its change
//! subscription delivers a record. What separates a `propagation` run from this one is then
//! the mesh itself: Automerge, the sync protocol, the node and its driver.
//!
//! Lines it prints: `joined`, `seen`, `addr` (its endpoint's address, the answer to `addr`),
//! `links` (the answer to `links {n}` once `n` links are up), `error`. Commands: `addr`,
//! `dial {addrs}`, `links {n}`, `stamp {key}`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rand_core::SeedableRng;
use serde_json::json;
use statemesh_core::PeerId;
use statemesh_net::quic::{Endpoint, Link};
use statemesh_net::secret::Secret;
use tokio::sync::mpsc;

use crate::clock::now_ns;
use crate::window::{command_of, emit, stdin_lines};

/// The most bytes a frame's key may take (the harness's keys are a few bytes).
const MAX_KEY: usize = 256;

/// Runs the floor window until stdin ends.
pub(crate) async fn run(secret_file: Option<&Path>, mesh: &str) -> anyhow::Result<()> {
    let started = now_ns();
    let secret = match secret_file {
        Some(path) => Secret::load_or_create(path).context("the secret file")?,
        None => Secret::generate(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::from_os_rng();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let me = PeerId::generate(unix_ms, &mut rng);
    let endpoint = Endpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), me, secret, mesh)?;
    let addr = endpoint.local_addr()?;

    let (frames_tx, mut frames) = mpsc::unbounded_channel::<(String, i64)>();
    let (links_tx, mut new_links) = mpsc::unbounded_channel::<Link>();
    let accepting = endpoint.clone();
    let accepted = links_tx.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.incoming().await {
            let (endpoint, accepted) = (accepting.clone(), accepted.clone());
            tokio::spawn(async move {
                match endpoint.authenticate(incoming).await {
                    Ok(link) => {
                        let _ = accepted.send(link);
                    }
                    Err(e) => emit(&json!({"ev": "error", "error": format!("accept: {e}")})),
                }
            });
        }
    });
    emit(&json!({
        "ev": "joined",
        "peer": me.to_string(),
        "pid": std::process::id(),
        "join_us": (now_ns() - started) as f64 / 1e3,
    }));

    let mut stdin = stdin_lines();
    let mut senders = Vec::new();
    let mut waiting_for: Option<usize> = None;
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let t = now_ns();
                let Some((key, stamp)) = frame else { break };
                emit(&json!({"ev": "seen", "key": key, "delay_ns": t as i64 - stamp}));
            }
            link = new_links.recv() => {
                let Some(link) = link else { break };
                senders.push(split(link, frames_tx.clone()));
                if waiting_for.is_some_and(|n| senders.len() >= n) {
                    waiting_for = None;
                    emit(&json!({"ev": "links", "links": senders.len()}));
                }
            }
            line = stdin.recv() => {
                let Some(line) = line else { break };
                let Some(cmd) = command_of(&line) else { continue };
                match cmd["op"].as_str().unwrap_or_default() {
                    "stamp" => {
                        let key = cmd["key"].as_str().unwrap_or_default();
                        let frame = encode(key, now_ns() as i64);
                        for send in &mut senders {
                            send.write_all(&frame).await.context("a link's stream")?;
                        }
                    }
                    "dial" => {
                        for a in cmd["addrs"].as_array().into_iter().flatten() {
                            let a: SocketAddr = a.as_str().unwrap_or_default().parse()?;
                            let (endpoint, dialled) = (endpoint.clone(), links_tx.clone());
                            tokio::spawn(async move {
                                match endpoint.connect(a).await {
                                    Ok(link) => {
                                        let _ = dialled.send(link);
                                    }
                                    Err(e) => emit(&json!({"ev": "error",
                                        "error": format!("dial {a}: {e}")})),
                                }
                            });
                        }
                    }
                    "addr" => emit(&json!({"ev": "addr", "addr": addr.to_string()})),
                    "links" => {
                        let n = cmd["n"].as_u64().unwrap_or(0) as usize;
                        if senders.len() >= n {
                            emit(&json!({"ev": "links", "links": senders.len()}));
                        } else {
                            waiting_for = Some(n);
                        }
                    }
                    op => emit(&json!({"ev": "error", "error": format!("unknown op {op:?}")})),
                }
            }
        }
    }
    endpoint.close();
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
    Ok(())
}

/// A frame: the key's length (one byte), the key, the stamp (8 bytes, big-endian).
fn encode(key: &str, stamp: i64) -> Vec<u8> {
    let key = &key.as_bytes()[..key.len().min(MAX_KEY - 1)];
    let mut frame = Vec::with_capacity(1 + key.len() + 8);
    frame.push(key.len() as u8);
    frame.extend_from_slice(key);
    frame.extend_from_slice(&stamp.to_be_bytes());
    frame
}

/// Reads frames from `link` until it ends, handing each to the application task; takes the
/// link's send stream for the application task's writes.
fn split(link: Link, to_app: mpsc::UnboundedSender<(String, i64)>) -> quinn::SendStream {
    let mut recv = link.recv;
    tokio::spawn(async move {
        let mut buf = [0u8; MAX_KEY + 8];
        loop {
            if recv.read_exact(&mut buf[..1]).await.is_err() {
                return;
            }
            let len = usize::from(buf[0]);
            if recv.read_exact(&mut buf[..len + 8]).await.is_err() {
                return;
            }
            let key = String::from_utf8_lossy(&buf[..len]).into_owned();
            let mut stamp = [0u8; 8];
            stamp.copy_from_slice(&buf[len..len + 8]);
            if to_app.send((key, i64::from_be_bytes(stamp))).is_err() {
                return;
            }
        }
    });
    link.send
}

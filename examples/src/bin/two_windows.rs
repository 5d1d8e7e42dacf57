//! The sans-IO core by hand: two windows' state machines wired together in memory.
//!
//! Shows the shape every runtime follows: feed inputs (link up, received bytes, ticks, local
//! writes), drain outputs (frames to send, events, bytes to persist). Nothing here opens a
//! socket or reads a clock; time is whatever the caller says it is.
//!
//! Run: `cargo run -p statemesh-examples --bin two_windows`

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use statemesh_core::codec::FrameDecoder;
use statemesh_core::{Config, Event, MeshTag, Node, PeerId, Scope, Time};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mesh = MeshTag::derive(b"a secret shared by the windows", "my-workspace");
    let mut a = Node::new(
        Config::default(),
        mesh,
        PeerId::generate(1_000, &mut rng),
        &mut rng,
        Time::ZERO,
    );
    let mut b = Node::new(
        Config::default(),
        mesh,
        PeerId::generate(1_001, &mut rng),
        &mut rng,
        Time::ZERO,
    );

    // A link comes up once both hellos are checked.
    let (hello_a, hello_b) = (a.hello(), b.hello());
    a.check_hello(&hello_b)?;
    b.check_hello(&hello_a)?;
    a.handle_link_up(Time::ZERO, &hello_b);
    b.handle_link_up(Time::ZERO, &hello_a);

    // Both windows write at once; counters add up, no lock involved.
    a.add("workspaces/ws-1/desired", 1, Scope::Durable)?;
    b.add("workspaces/ws-1/desired", 1, Scope::Durable)?;
    b.put("probes", "api:443", &"up".to_string(), Scope::Durable)?;

    // Time passes; the transport carries frames both ways until nothing is left to say.
    let mut now = Time::ZERO;
    for _ in 0..10 {
        now = now + std::time::Duration::from_millis(100);
        a.handle_tick(now);
        b.handle_tick(now);
        shuttle(&mut a, &mut b, now)?;
        shuttle(&mut b, &mut a, now)?;
    }

    println!("a sees desired = {}", a.counter("workspaces/ws-1/desired"));
    println!(
        "a sees probes/api:443 = {:?}",
        a.get::<String>("probes", "api:443")?
    );
    println!("leadership as a sees it: {:?}", a.leadership());
    while let Some(event) = a.poll_event() {
        if let Event::Leadership(l) = event {
            println!("a: leadership changed to {l:?}");
        }
    }
    Ok(())
}

/// Moves every frame `from` wants to send into `to`, as a transport would.
fn shuttle(from: &mut Node, to: &mut Node, now: Time) -> Result<(), Box<dyn std::error::Error>> {
    let sender = from.me().peer;
    while let Some(t) = from.poll_transmit() {
        let mut decoder = FrameDecoder::new(from.config().max_frame);
        decoder.extend(&t.frame);
        while let Some(frame) = decoder.next_frame()? {
            to.handle_frame(now, sender, &frame)?;
        }
    }
    Ok(())
}

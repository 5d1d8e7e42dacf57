//! The smallest embedding of statemesh in an async Rust app: join, write, watch, leave.
//!
//! Each window announces itself with a presence-scoped record (it vanishes when the window
//! dies), bumps a durable counter (it survives restarts), and prints every change it sees.
//! Run it in two or three terminals at once; windows on this machine find each other by
//! local sockets:
//!
//! ```sh
//! cargo run -p statemesh-examples --bin embed                  # until Ctrl-C
//! cargo run -p statemesh-examples --bin embed -- --for-secs 5  # leaves on its own
//! ```
//!
//! By default it uses the per-user secret, runtime and state directories, as an app does;
//! `--dir DIR` keeps everything under DIR instead (see `--help`).

use clap::Parser;
use statemesh::{EntryKind, Scope};
use statemesh_examples::WindowArgs;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    window: WindowArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // In an app: `Mesh::builder("embed-demo").join().await?` — the flags only move the files.
    let mesh = args.window.builder("embed-demo").join().await?;
    let me = mesh.id().to_string();
    println!("joined as {me}");
    let mut changes = mesh.changes(); // subscribed before writing: we see our own writes too

    mesh.put("windows", &me, &"hello", Scope::Presence)?;
    mesh.add("embed/joins", 1, Scope::Durable)?
        .durable()
        .await?;

    let watch = async {
        loop {
            match changes.recv().await {
                Some(Ok(c)) if c.kind == EntryKind::Counter => {
                    println!("counter {} = {}", c.key, mesh.counter(&c.key));
                }
                Some(Ok(c)) if c.kind == EntryKind::Record => {
                    let value = mesh.get::<String>(&c.channel, &c.key)?;
                    println!("record {}/{} = {value:?}", c.channel, c.key);
                }
                Some(Ok(_)) => {}
                Some(Err(_lagged)) => {} // after a lag: re-read what you show
                None => return anyhow::Ok(()), // the mesh was shut down
            }
        }
    };
    tokio::select! {
        r = watch => r?,
        () = args.window.done() => {}
    }
    println!("windows here: {}", mesh.keys("windows").len());
    mesh.shutdown().await;
    println!("left");
    Ok(())
}

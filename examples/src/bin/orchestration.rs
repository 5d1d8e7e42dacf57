//! Desired and running counts across windows: counters that add up, and presence that vanishes.
//!
//! Each window owns a workspace. `desired/<ws>` is a durable counter any window may bump
//! (`+ ws` on stdin, or `--bump ws`): bumps made at once by several windows add up instead of
//! overwriting each other. The owner reconciles: it starts or stops workers (here, a number) so
//! that its `running/<ws>` matches, and `running` is presence-scoped, so a crashed window's
//! workers vanish from everyone's totals at once while its `desired` stays. Every window prints
//! the global totals and each live workspace as `running/desired`.
//!
//! ```sh
//! cargo run -p statemesh-examples --bin orchestration -- --workspace api --bump api
//! cargo run -p statemesh-examples --bin orchestration -- --workspace web --bump api  # 2nd terminal
//! ```
//!
//! Then type `+ web` or `- api` in either terminal, and kill one window (`kill -9`) to watch
//! its `running` leave the totals. `--lan` (same secret file copied to every machine) spans the
//! machines of a LAN; `--dir DIR` keeps all files under DIR; `--for-secs N` leaves on its own.

use std::fmt::Write as _;
use std::io::BufRead;

use clap::Parser;
use statemesh::{Mesh, Scope, WriteError};
use statemesh_examples::WindowArgs;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// The workspace this window owns and runs workers for.
    #[arg(long)]
    workspace: String,
    /// Add 1 to the desired count of WS once joined (repeatable).
    #[arg(long = "bump", value_name = "WS")]
    bumps: Vec<String>,
    #[command(flatten)]
    window: WindowArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ws = args.workspace.as_str();
    let mesh = args.window.builder("orchestration").join().await?;
    println!("joined as {}, owning {ws}", mesh.id());
    let mut changes = mesh.changes();
    // Listed while this window lives: a crashed window's workspace leaves the listing.
    mesh.put("workspaces", ws, &mesh.id().to_string(), Scope::Presence)?;
    for b in &args.bumps {
        bump(&mesh, b, 1)?;
    }
    let mut commands = stdin_lines();
    let done = args.window.done();
    tokio::pin!(done);
    let (mut running, mut shown) = (0, String::new());
    loop {
        running = reconcile(&mesh, ws, running)?;
        let line = totals(&mesh, ws);
        if line != shown {
            println!("{line}");
            shown = line;
        }
        tokio::select! {
            // Any change (or a lag): reconcile again; the end of the stream: the mesh closed.
            c = changes.recv() => if c.is_none() { break },
            Some(cmd) = commands.recv() => match cmd.split_whitespace().collect::<Vec<_>>()[..] {
                ["+", w] => bump(&mesh, w, 1)?,
                ["-", w] => bump(&mesh, w, -1)?,
                ["+"] => bump(&mesh, ws, 1)?,
                ["-"] => bump(&mesh, ws, -1)?,
                _ => println!("commands: `+ [ws]`, `- [ws]`"),
            },
            () = &mut done => break,
        }
    }
    mesh.shutdown().await;
    println!("left");
    Ok(())
}

/// `desired/<ws> += by`, and the global total with it, in one atomic change.
fn bump(mesh: &Mesh, ws: &str, by: i64) -> Result<(), WriteError> {
    mesh.transact(|tx| {
        tx.add(&format!("desired/{ws}"), by, Scope::Durable)?;
        tx.add("total/desired", by, Scope::Durable)
    })?;
    Ok(())
}

/// Starts or stops this window's workers to match `desired/<ws>`; returns how many now run.
/// Only the owner writes `running/<ws>`, presence-scoped: its entry vanishes with it.
fn reconcile(mesh: &Mesh, ws: &str, running: i64) -> Result<i64, WriteError> {
    let desired = mesh.counter(&format!("desired/{ws}")).max(0);
    let delta = desired - running;
    if delta != 0 {
        println!("{ws}: {running} -> {desired} workers");
        mesh.transact(|tx| {
            tx.add(&format!("running/{ws}"), delta, Scope::Presence)?;
            tx.add("total/running", delta, Scope::Presence)
        })?;
    }
    Ok(desired)
}

/// `totals: desired D running R | ws running/desired ...`, this window's workspace starred.
fn totals(mesh: &Mesh, mine: &str) -> String {
    let (d, r) = (mesh.counter("total/desired"), mesh.counter("total/running"));
    let mut line = format!("totals: desired {d} running {r} |");
    for ws in mesh.keys("workspaces") {
        let star = if ws == mine { "*" } else { "" };
        let (r, d) = (
            mesh.counter(&format!("running/{ws}")),
            mesh.counter(&format!("desired/{ws}")),
        );
        let _ = write!(line, " {ws}{star} {r}/{d}");
    }
    line
}

/// Lines typed on stdin (a plain thread: a blocking read must not hold up the runtime's exit).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

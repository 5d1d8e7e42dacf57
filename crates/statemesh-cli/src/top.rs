//! `statemesh top`: a live terminal view of a mesh — members, leader and term, channels, and
//! propagation delays — for a terminal, local or over `ssh`. `q`, Esc or Ctrl-C quits.
//!
//! Like the query commands it joins as a short-lived peer that never leads. To measure
//! propagation it writes a presence-scoped probe record (`statemesh-top/<its id>`) once a
//! second and times how long each running window takes to hold it (a round trip on its own
//! clock; see `Mesh::metrics`); the record vanishes when `top` exits.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use statemesh::{Mesh, Scope};

use crate::query::QueryArgs;

/// How often the view redraws (it also redraws on every change).
const REFRESH: Duration = Duration::from_millis(250);
/// How often the propagation probe is written.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Exit code when there is no terminal.
pub(crate) const EXIT_NO_TERMINAL: u8 = 5;

pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!(
            "statemesh top needs a terminal (stdin and stdout); in scripts use `statemesh watch --json` or `statemesh status --json`"
        );
        return Ok(ExitCode::from(EXIT_NO_TERMINAL));
    }
    let mesh = args
        .mesh
        .builder()
        .eligible(false)
        .persist(false)
        .join()
        .await?;
    // Keys arrive on a thread of their own (reading the terminal blocks).
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                        let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                            || (k.code == KeyCode::Char('c')
                                && k.modifiers.contains(KeyModifiers::CONTROL));
                        if quit {
                            let _ = keys_tx.send(());
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {
                    if keys_tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let mut terminal = ratatui::init();
    let result = view(&mut terminal, &mesh, &args.mesh.mesh, &mut keys).await;
    ratatui::restore();
    mesh.shutdown().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn view(
    terminal: &mut DefaultTerminal,
    mesh: &Mesh,
    name: &str,
    keys: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let mut changes = mesh.changes();
    let mut tick = tokio::time::interval(REFRESH);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    let mut n: u64 = 0;
    let me = mesh.id().to_string();
    loop {
        terminal.draw(|f| draw(f, mesh, name))?;
        tokio::select! {
            _ = keys.recv() => return Ok(()),
            _ = tick.tick() => {}
            _ = changes.recv() => {}
            _ = probe.tick() => {
                n += 1;
                let _ = mesh.put("statemesh-top", &me, &n, Scope::Presence);
            }
        }
    }
}

fn draw(f: &mut Frame<'_>, mesh: &Mesh, name: &str) {
    let why = mesh.explain();
    let me = mesh.id();
    let metrics = mesh.metrics();
    let leader = why
        .leadership
        .leader
        .map_or_else(|| "nobody".to_owned(), |p| p.to_string());
    let term = why
        .leadership
        .term
        .map_or_else(|| "pending".to_owned(), |t| t.to_string());
    let members: Vec<_> = why.peers.iter().filter(|p| p.peer != me).collect();
    let live = members.iter().filter(|p| p.live).count();
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(4),
    ])
    .areas(f.area());
    let title = Paragraph::new(vec![
        Line::from(format!(
            "mesh {name:?}   leader {leader}   term {term}   {live}/{} members live",
            members.len()
        )),
        Line::from("q: quit"),
    ])
    .block(Block::bordered().title(" statemesh top "));
    f.render_widget(title, head);

    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(body);
    let rows = members.iter().map(|p| {
        let role = if Some(p.peer) == why.leadership.leader {
            "leader"
        } else if p.eligible {
            ""
        } else {
            "observer"
        };
        Row::new(vec![
            p.peer.to_string(),
            if p.live { "live" } else { "dead" }.to_owned(),
            format!("{:.0} ms", p.silent_for.as_secs_f64() * 1e3),
            role.to_owned(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(36),
            Constraint::Length(5),
            Constraint::Length(9),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(vec!["peer", "", "silent", ""]).style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(" members "));
    f.render_widget(table, left);

    let mut lines = Vec::new();
    for channel in mesh.channels() {
        lines.push(Line::from(format!(
            "{channel}: {} records",
            mesh.keys(&channel).len()
        )));
    }
    for channel in ["probes"] {
        for key in mesh.leader_keys(channel) {
            if let Ok(Some((v, t))) = mesh.leader_get::<statemesh::Value>(channel, &key) {
                lines.push(Line::from(format!(
                    "{channel}/{key} = {v:?} (term {})",
                    t.number
                )));
            }
        }
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" channels ")),
        right,
    );

    let p = metrics.propagation;
    let footer = Paragraph::new(vec![
        Line::from(format!(
            "propagation (write → held by a window, round trip): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples)",
            p.p50_us as f64 / 1e3,
            p.p99_us as f64 / 1e3,
            p.max_us as f64 / 1e3,
            p.samples
        )),
        Line::from(format!(
            "links {}  sync in/out {}/{}  bytes in/out {}/{}  auth failures {}  decode errors {}",
            metrics.links,
            metrics.sync_in,
            metrics.sync_out,
            metrics.bytes_in,
            metrics.bytes_out,
            metrics.auth_failures,
            metrics.decode_errors
        )),
    ])
    .block(Block::bordered().title(" this peer "));
    f.render_widget(footer, foot);
}

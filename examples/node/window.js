'use strict';
// One "window" of a Node.js app on a statemesh mesh, through `statemesh sidecar`.
//
//   node examples/node/window.js --name A [--bin target/debug/statemesh] [sidecar flags...]
//
// Start it in several terminals (same --mesh): every window announces itself in the `windows`
// channel (presence-scoped: it disappears when the window dies), counts itself in the
// `windows_open` counter, and the probe leader (the longest-running window) writes a probe
// result through its lead guard. Kill the leader window (Ctrl-C, or kill -9): the others report
// the next leader at once, and it probes. What a window sees is printed as JSON lines.
//
// Flags other than --name and --bin go to `statemesh sidecar` (e.g. --mesh, --runtime-dir,
// --state-dir, --secret-file, --no-persist, --not-eligible).

const path = require('path');
const { Sidecar } = require('./statemesh');

function parseArgs(argv) {
  const o = { name: 'window-' + process.pid, bin: process.env.STATEMESH_BIN, extra: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--name') o.name = argv[++i];
    else if (argv[i] === '--bin') o.bin = argv[++i];
    else o.extra.push(argv[i]);
  }
  if (!o.bin) {
    // Default: the debug build of this repository, else `statemesh` on PATH.
    const local = path.join(__dirname, '..', '..', 'target', 'debug', 'statemesh');
    o.bin = require('fs').existsSync(local) ? local : 'statemesh';
  }
  return o;
}

function say(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields)) + '\n');
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const mesh = await Sidecar.spawn({ bin: args.bin, extraArgs: args.extra, client: args.name });
  say('ready', { name: args.name, peer: mesh.peer, sidecar_pid: mesh.pid, leadership: mesh.leadership });

  // What this window shows, refreshed on every change notification.
  let shownWindows = '';
  let shownCount = null;
  let shownProbe = '';
  const refresh = async () => {
    const names = [];
    for (const key of await mesh.keys('windows')) {
      const r = await mesh.get('windows', key);
      if (r.found) names.push(r.value.name);
    }
    names.sort();
    if (names.join('\n') !== shownWindows) {
      shownWindows = names.join('\n');
      say('windows', { names });
    }
    const count = await mesh.counter('windows_open');
    if (count !== shownCount) {
      shownCount = count;
      say('counter', { name: 'windows_open', value: count });
    }
    const probe = await mesh.leaderGet('probes', 'status');
    const text = probe.found ? probe.value + ' @' + probe.term : '';
    if (text !== shownProbe) {
      shownProbe = text;
      say('probe', { value: probe.found ? probe.value : null, term: probe.term });
    }
  };
  // Serialise refreshes: a burst of notifications gives one refresh after it.
  let refreshing = null;
  let again = false;
  const scheduleRefresh = () => {
    if (refreshing) { again = true; return; }
    refreshing = refresh()
      .catch((e) => say('error', { code: e.code, message: e.message }))
      .then(() => {
        refreshing = null;
        if (again) { again = false; scheduleRefresh(); }
      });
  };
  mesh.on('change', scheduleRefresh);
  mesh.on('lagged', scheduleRefresh);

  // Leadership: report it; while this window leads, probe through the lead guard.
  let probing = false;
  let shownLeadership = '';
  const onLeadership = async (l) => {
    const shown = JSON.stringify([l.leader, l.term, l.is_me]);
    if (shown !== shownLeadership) {
      shownLeadership = shown;
      say('leadership', { leader: l.leader, term: l.term, is_me: l.is_me });
    }
    if (!l.is_me || l.term === null || probing) return;
    probing = true;
    try {
      const { term } = await mesh.leadAcquire({ timeout_ms: 5000 });
      await mesh.leadPut('probes', 'status', 'probed by ' + args.name, term);
      say('leading', { term });
    } catch (e) {
      say('lead_error', { code: e.code, message: e.message });
    } finally {
      probing = false;
    }
  };
  mesh.on('leadership', onLeadership);
  mesh.on('lead_lost', (l) => say('lead_lost', l));
  let closing = false;
  mesh.on('exit', (code, signal) => {
    if (closing) return;
    say('sidecar_exit', { code, signal });
    process.exit(code === 0 ? 0 : 1);
  });

  onLeadership(mesh.leadership);

  // Announce this window (gone with it if it dies) and count it.
  await mesh.putPresence('windows', mesh.peer, { name: args.name, pid: process.pid });
  await mesh.add('windows_open', 1, { scope: 'presence' });
  scheduleRefresh();

  // Close gracefully: leave the mesh (the next leader takes over at once), then exit.
  const close = async () => {
    if (closing) return;
    closing = true;
    await mesh.shutdown();
    say('left', {});
    process.exit(0);
  };
  process.on('SIGTERM', close);
  process.on('SIGINT', close);
}

main().catch((e) => {
  say('fatal', { code: e.code, message: e.message });
  process.exit(2);
});

'use strict';
// One "window" of a Node.js app on a statemesh mesh, built on the `statemesh` package
// (clients/node: build it once with `npm ci && npm run build` there).
//
//   node examples/node/window.js --name A [--mesh demo] [--bin target/debug/statemesh] [sidecar flags...]
//
// Start it in several terminals (same --mesh): every window announces itself in the `windows`
// channel (presence-scoped: it disappears when the window dies), counts itself in the
// `windows_open` counter, and the probe leader writes a probe result through its lead guard.
// Kill the leader window (Ctrl-C, or kill -9): the others report the next leader at once, and
// it probes. What a window sees is printed as JSON lines.
//
// Flags other than --name, --mesh and --bin go to `statemesh sidecar` (e.g. --runtime-dir,
// --state-dir, --secret-file, --no-persist, --not-eligible).

const fs = require('fs');
const path = require('path');
const { Mesh, ErrorCode } = require('../../clients/node');

function parseArgs(argv) {
  const o = { name: 'window-' + process.pid, mesh: 'demo', bin: undefined, args: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--name') o.name = argv[++i];
    else if (argv[i] === '--mesh') o.mesh = argv[++i];
    else if (argv[i] === '--bin') o.bin = argv[++i];
    else o.args.push(argv[i]);
  }
  if (!o.bin && !process.env.STATEMESH_BIN) {
    // Default: the debug build of this repository if there is one, else the package's search.
    const local = path.join(__dirname, '..', '..', 'target', 'debug', 'statemesh');
    if (fs.existsSync(local)) o.bin = local;
  }
  return o;
}

function say(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields)) + '\n');
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const mesh = await Mesh.join(o.mesh, {
    bin: o.bin,
    args: o.args,
    client: { name: o.name },
    logger: (line) => process.stderr.write(`[sidecar] ${line}\n`),
  });
  say('ready', { name: o.name, peer: mesh.peer, sidecar_pid: mesh.pid, leadership: mesh.leadership });

  let closing = false;
  mesh.on('exit', (exit) => {
    say('sidecar_exit', { code: exit.code, signal: exit.signal });
    process.exit(1);
  });

  // What this window shows, re-read after every change (a burst of changes gives one re-read).
  const shown = {};
  const show = (event, fields) => {
    const text = JSON.stringify(fields);
    if (shown[event] !== text) {
      shown[event] = text;
      say(event, fields);
    }
  };
  const refresh = async () => {
    const names = [];
    for (const key of await mesh.keys('windows')) {
      const r = await mesh.get('windows', key);
      if (r.found) names.push(r.value.name);
    }
    show('windows', { names: names.sort() });
    show('counter', { name: 'windows_open', value: await mesh.counter('windows_open') });
    const probe = await mesh.leaderGet('probes', 'status');
    show('probe', { value: probe.value, term: probe.term });
  };
  let refreshing = null;
  let again = false;
  const scheduleRefresh = () => {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = refresh()
      .catch((e) => closing || say('error', { code: e.code, message: e.message }))
      .then(() => {
        refreshing = null;
        if (again) {
          again = false;
          scheduleRefresh();
        }
      });
  };

  // Subscriptions: async iterables that end when the mesh is closed.
  (async () => {
    for await (const _change of mesh.changes()) scheduleRefresh();
  })().catch(() => {});
  (async () => {
    for await (const l of mesh.leaderships()) show('leadership', { leader: l.leader, term: l.term, is_me: l.is_me });
  })().catch(() => {});

  // The probe leader: wait to lead, probe under the guard's term until the guard is lost.
  (async () => {
    for (;;) {
      const guard = await mesh.lead();
      try {
        await guard.put('probes', 'status', 'probed by ' + o.name);
        say('leading', { term: guard.term });
      } catch (e) {
        // Lost already (a lower id appeared meanwhile): the guard is aborted; wait again.
        if (e.code !== ErrorCode.NOT_LEADER) throw e;
      }
      const why = await guard.whenLost();
      say('lead_lost', { term: guard.term, code: why.code });
    }
  })().catch((e) => {
    if (e.code !== ErrorCode.MESH_CLOSED && e.code !== ErrorCode.SIDECAR_EXITED) {
      say('lead_error', { code: e.code, message: e.message });
    }
  });

  // Announce this window (gone with it if it dies) and count it.
  await mesh.putPresence('windows', mesh.peer, { name: o.name, pid: process.pid });
  await mesh.add('windows_open', 1, { scope: 'presence' });
  scheduleRefresh();

  // Close gracefully: leave the mesh (the next leader takes over at once), then exit.
  const close = async () => {
    if (closing) return;
    closing = true;
    mesh.removeAllListeners('exit');
    await mesh.close();
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

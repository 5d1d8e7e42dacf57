// @ts-check
// examples/node/window.js, three of them as separate processes: they share state, the probe
// leader probes, a SIGKILLed leader window is replaced, a SIGTERMed one hands over.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { freshMesh, nextEvent, WITHIN_MS } from './helpers.mjs';

const WINDOW = fileURLToPath(new URL('../../../examples/node/window.js', import.meta.url));

/** The latest line of each event each window printed, and waits on them. */
class Board {
  /** @type {Map<string, any>} */
  latest = new Map();
  /** @type {Array<() => void>} */
  waiters = [];
  /** A window that reported a failure: every wait fails with it. @type {Error | null} */
  failure = null;

  /** @param {number} from @param {any} line */
  add(from, line) {
    if (line.event === 'fatal' || line.event === 'lead_error' || line.event === 'error') {
      this.failure ??= new Error(`window ${from}: ${JSON.stringify(line)}`);
    }
    this.latest.set(`${from}/${line.event}`, line);
    for (const w of this.waiters.splice(0)) w();
  }

  /**
   * Waits until the latest `event` line of every window in `who` passes `check`.
   * @param {number[]} who @param {string} event @param {string} what @param {(line: any) => boolean} check
   */
  async until(who, event, what, check) {
    const deadline = Date.now() + WITHIN_MS;
    for (;;) {
      if (this.failure) throw this.failure;
      const seen = who.map((w) => {
        const line = this.latest.get(`${w}/${event}`);
        return line !== undefined && check(line);
      });
      if (seen.every(Boolean)) return;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`windows ${who} did not all see ${what} (seen: ${seen})`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve(undefined);
        });
      });
    }
  }
}

test('example windows share state, and the leader window is replaced when killed or closed', async (t) => {
  const m = await freshMesh(t);
  const board = new Board();
  const flags = ['--mesh', m.name, '--runtime-dir', m.flags.runtimeDir, '--state-dir', m.flags.stateDir, '--secret-file', m.flags.secretFile];
  const windows = await Promise.all(
    [0, 1, 2].map(async (n) => {
      const child = spawn(process.execPath, [WINDOW, '--name', `w${n}`, ...flags], { stdio: ['ignore', 'pipe', 'pipe'] });
      t.after(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      });
      child.stderr.resume();
      const lines = createInterface({ input: child.stdout });
      /** @type {Promise<any>} */
      const ready = new Promise((resolve, reject) => {
        lines.on('line', (text) => {
          const line = JSON.parse(text);
          if (line.event === 'ready') resolve(line);
          board.add(n, line);
          if (board.failure) reject(board.failure);
        });
        child.on('exit', (code) => reject(new Error(`window ${n} exited with ${code} before it was ready`)));
      });
      const { peer } = await ready;
      return { n, child, peer: /** @type {string} */ (peer), name: `w${n}` };
    }),
  );
  const order = [...windows].sort((a, b) => (a.peer < b.peer ? -1 : 1));
  const all = [0, 1, 2];

  await board.until(all, 'windows', "every window's record", (l) => JSON.stringify(l.names) === '["w0","w1","w2"]');
  await board.until(all, 'counter', 'the counter at 3', (l) => l.value === 3);
  await board.until(all, 'leadership', 'the first leader', (l) => l.leader === order[0].peer && l.term !== null);
  await board.until(all, 'probe', 'the first probe', (l) => l.value === `probed by ${order[0].name}`);

  // SIGKILL the leader window: its sidecar sees its parent die and leaves; the next id leads.
  order[0].child.kill('SIGKILL');
  const survivors = [order[1].n, order[2].n];
  await board.until(survivors, 'leadership', 'the second leader', (l) => l.leader === order[1].peer && l.term !== null);
  await board.until(survivors, 'probe', 'the second probe', (l) => l.value === `probed by ${order[1].name}`);
  const left = [order[1].name, order[2].name].sort();
  await board.until(survivors, 'windows', "the dead window's record gone", (l) => JSON.stringify(l.names) === JSON.stringify(left));
  await board.until(survivors, 'counter', 'the counter at 2', (l) => l.value === 2);

  // SIGTERM the new leader window: it closes its mesh gracefully; the last window leads.
  const exited = nextEvent(order[1].child, 'exit');
  order[1].child.kill('SIGTERM');
  await board.until([order[2].n], 'leadership', 'the last leader', (l) => l.leader === order[2].peer && l.is_me && l.term !== null);
  assert.equal(await exited, 0, 'the window closed cleanly');
  const last = nextEvent(order[2].child, 'exit');
  order[2].child.kill('SIGTERM');
  assert.equal(await last, 0, 'the window closed cleanly');
});

// @ts-check
// Backpressure against the real sidecar: a writer far ahead of its peer is refused BUSY, waits
// with waitBackpressure(), and writes again once the peer has caught up. The peer's sidecar is
// frozen with SIGSTOP (it acknowledges nothing, and stays live: a suspect timeout of a minute,
// a freeze of milliseconds), then woken with SIGCONT. `backpressure` events say when writes
// begin and cease to be pushed back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, StatemeshError } from 'statemesh';
import { freeze, freshMesh } from './helpers.mjs';

const SOFT = 4;
const HARD = 8;

/** @param {number | string} code */
const withCode = (code) => (/** @type {unknown} */ e) => e instanceof StatemeshError && e.code === code;

test('a busy writer waits until its frozen peer catches up, then writes again', async (t) => {
  const m = await freshMesh(t);
  const window = { suspectMs: 60_000, persist: false };
  const a = await m.join({ ...window, args: ['--backpressure', `${SOFT},${HARD}`] });
  const b = await m.join(window);
  // Linked both ways once b holds a write of a.
  await a.put('w', 'warm', 0, { replicated: 1, timeoutMs: 15_000 });

  // Every `backpressure` event, and a wait for the first one saying `pressed`.
  /** @type {{pressed: boolean, backlog: number}[]} */
  const states = [];
  a.on('backpressure', (s) => states.push(s));
  /** @param {boolean} pressed */
  const told = (pressed) =>
    new Promise((resolve) => {
      const check = () => {
        const s = states.find((x) => x.pressed === pressed);
        if (s === undefined) return;
        a.off('backpressure', check);
        resolve(s);
      };
      a.on('backpressure', check);
      check();
    });

  // Not pushed back: resolves at once.
  const idle = await a.waitBackpressure();
  assert.ok(idle.backlog < SOFT, `backlog ${idle.backlog}`);
  await assert.rejects(a.waitBackpressure(/** @type {any} */ ({ timeout: 5 })), withCode(ErrorCode.INVALID_PARAMS));

  const pid = b.pid;
  assert.ok(pid !== undefined);
  await freeze(pid);
  let frozen = true;
  try {
    // The writer runs into the hard bound: refused, nothing written, told what to call.
    let written = 0;
    /** @type {any} */
    let busy;
    for (;;) {
      try {
        await a.put('c', `k${written}`, written);
      } catch (e) {
        busy = e;
        break;
      }
      written++;
      assert.ok(written <= HARD, 'no write past the hard bound');
    }
    assert.ok(busy instanceof StatemeshError, String(busy));
    assert.equal(busy.code, ErrorCode.BUSY);
    const data = /** @type {any} */ (busy.data);
    assert.equal(data.limit, HARD);
    assert.ok(data.backlog >= HARD, JSON.stringify(data));
    assert.equal(data.retry, 'backpressure_wait');
    // Told when its writes began to be pushed back.
    const on = /** @type {{pressed: boolean, backlog: number}} */ (await told(true));
    assert.equal(typeof on.backlog, 'number');

    // The wait does not end while the peer is frozen, and does not hold up other calls.
    let ended = false;
    const waiting = a.waitBackpressure().finally(() => {
      ended = true;
    });
    await assert.rejects(a.waitBackpressure({ timeoutMs: 50 }), withCode(ErrorCode.TIMEOUT));
    const aborter = new AbortController();
    const aborted = a.waitBackpressure({ signal: aborter.signal });
    aborter.abort();
    await assert.rejects(aborted, withCode(ErrorCode.ABORTED));
    await assert.rejects(a.put('c', 'still', 1), withCode(ErrorCode.BUSY));
    assert.equal((await a.keys('c')).length, written, 'refused writes wrote nothing');
    // Answers come in the order the sidecar wrote them: let any earlier one settle first.
    await new Promise((r) => setImmediate(() => r(undefined)));
    assert.equal(ended, false, 'the wait ended while the peer was frozen');

    // Woken, the peer catches up: the wait ends under half the soft bound.
    process.kill(pid, 'SIGCONT');
    frozen = false;
    const done = await waiting;
    assert.ok(done.backlog < SOFT / 2, `backlog ${done.backlog}`);
    // And told when that ended.
    const off = /** @type {{pressed: boolean, backlog: number}} */ (await told(false));
    assert.ok(off.backlog < SOFT / 2, `backlog ${off.backlog}`);
    assert.ok((await b.keys('c')).length >= written - 1, 'the peer holds all but at most one');
    assert.deepEqual(await a.put('c', 'after', 1), { changed: true });
  } finally {
    if (frozen) process.kill(pid, 'SIGCONT');
  }
});

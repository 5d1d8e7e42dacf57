// @ts-check
// The probe leader: the lowest live peer id leads; its guard's writes carry the term; a
// SIGKILLed leader is replaced and the next window's guard is granted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, StatemeshError } from 'statemesh';
import { allSee, freshMesh, nextEvent, until } from './helpers.mjs';

/** @param {import('statemesh').Mesh[]} windows */
async function agreedLeader(windows, leader = [...windows].map((w) => w.peer).sort()[0]) {
  await Promise.all(
    windows.map((w, i) =>
      until(w.leaderships(), (l) => l.leader === leader && l.term !== null, `window ${i} to see ${leader} lead`),
    ),
  );
  return leader;
}

test('one leader, the lowest peer id; a SIGKILLed leader is replaced and the next guard granted', async (t) => {
  const m = await freshMesh(t);
  const windows = await Promise.all([m.join(), m.join(), m.join()]);
  const order = [...windows].sort((a, b) => (a.peer < b.peer ? -1 : 1));
  const [first, second, third] = order;

  await agreedLeader(windows);
  assert.equal(first.isLeader, true);
  assert.equal(second.isLeader, false);
  const guard = await first.lead({ timeoutMs: 10_000 });
  assert.equal(guard.term, first.leadership.term);
  assert.equal(guard.lost, false);
  assert.equal(first.leadGuard, guard);
  await guard.put('probes', 'api', { up: true });
  await allSee(windows, (w) => w.leaderGet('probes', 'api'), (r) => r.found, 'the first probe');
  // A term is its number and its leader: the first window's.
  assert.deepEqual(await third.leaderGet('probes', 'api'), {
    found: true,
    value: { up: true },
    term: guard.term,
    term_leader: first.peer,
  });

  // The others wait for leadership; a wait can time out or be aborted.
  await assert.rejects(third.lead({ timeoutMs: 50 }), { code: ErrorCode.TIMEOUT });
  const abort = new AbortController();
  const abandoned = third.lead({ signal: abort.signal });
  abort.abort();
  await assert.rejects(abandoned, { code: ErrorCode.ABORTED });
  const waiting = second.lead();

  // SIGKILL the leading window's sidecar: no graceful leave.
  const exited = nextEvent(first, 'exit');
  assert.ok(first.pid);
  const killedAt = performance.now();
  process.kill(first.pid, 'SIGKILL');
  const exit = await exited;
  assert.equal(exit.signal, 'SIGKILL');
  assert.equal(exit.restarting, false);
  // The killed window knows: its guard is aborted and it is closed.
  assert.equal(guard.lost, true);
  assert.equal(/** @type {StatemeshError} */ (guard.signal.reason).code, ErrorCode.SIDECAR_EXITED);
  assert.equal(first.closed, true);
  await assert.rejects(guard.put('probes', 'api', { up: false }), { code: ErrorCode.NOT_LEADER });

  // The next lowest id is granted the guard, under a newer term.
  const next = await waiting;
  t.diagnostic(`leader's sidecar SIGKILLed -> the next window's guard granted in ${(performance.now() - killedAt).toFixed(1)} ms`);
  assert.ok(next.term > guard.term, `term ${next.term} follows ${guard.term}`);
  await agreedLeader([second, third], second.peer);
  await next.put('probes', 'api', { up: true, by: 'second' });
  await allSee(
    [second, third],
    (w) => w.leaderGet('probes', 'api'),
    (r) => r.found && r.term === next.term,
    'the second probe',
  );
  assert.deepEqual(await third.leaderGet('probes', 'api'), {
    found: true,
    value: { up: true, by: 'second' },
    term: next.term,
    term_leader: second.peer,
  });

  // Closing the leader gracefully hands over: its guard aborts, the last window leads.
  const lost = next.whenLost();
  const last = third.lead({ timeoutMs: 15_000 });
  const closedAt = performance.now();
  await second.close();
  // Lost as the mesh closes: the sidecar's lead_lost (NOT_LEADER) or the close itself.
  assert.ok([ErrorCode.NOT_LEADER, ErrorCode.MESH_CLOSED].includes(/** @type {any} */ ((await lost).code)));
  assert.equal(next.lost, true);
  const lastGuard = await last;
  t.diagnostic(`leader closed -> the last window's guard granted in ${(performance.now() - closedAt).toFixed(1)} ms`);
  assert.ok(lastGuard.term > next.term);
  assert.equal(third.isLeader, true);
});

test('a guard of a stale term is refused by the sidecar, and released guards stop writing', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join();
  const guard = await mesh.lead({ timeoutMs: 10_000 });
  assert.deepEqual(await mesh.request('lead_put', { channel: 'p', key: 'k', value: 1, term: guard.term }), {
    term: guard.term,
    term_leader: mesh.peer,
  });
  await assert.rejects(mesh.request('lead_put', { channel: 'p', key: 'k', value: 1, term: guard.term + 1 }), (e) => {
    assert.ok(e instanceof StatemeshError);
    assert.equal(e.code, ErrorCode.NOT_LEADER);
    assert.deepEqual(e.data, { held_term: guard.term });
    return true;
  });
  assert.equal(await guard.release(), true);
  assert.equal(guard.lost, true);
  assert.equal(mesh.leadGuard, null);
  await assert.rejects(guard.put('p', 'k', 2), { code: ErrorCode.NOT_LEADER });
  // The sidecar holds no guard either.
  await assert.rejects(mesh.request('lead_put', { channel: 'p', key: 'k', value: 3 }), {
    code: ErrorCode.NOT_LEADER,
    message: 'no lead guard is held: call lead_acquire first',
  });
});

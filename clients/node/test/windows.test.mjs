// @ts-check
// Several windows of one mesh sharing state, against the real sidecar.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, StatemeshError } from 'statemesh';
import { allSee, freshMesh, until } from './helpers.mjs';

test('three windows see each other\'s records, and their counters add up', async (t) => {
  const m = await freshMesh(t);
  const windows = await Promise.all([m.join(), m.join(), m.join()]);
  const peers = windows.map((w) => w.peer);
  assert.equal(new Set(peers).size, 3, 'each window is its own peer');

  // Each window announces itself, presence-scoped, and every window sees all three.
  await Promise.all(windows.map((w, i) => w.putPresence('windows', w.peer, { n: i, bytes: new Uint8Array([i, 255]) })));
  await allSee(windows, (w) => w.keys('windows'), (keys) => keys.length === 3, 'three window records');
  for (const w of windows) {
    assert.deepEqual(await w.keys('windows'), [...peers].sort());
    const r = await w.get('windows', peers[2]);
    assert.deepEqual(r, { found: true, value: { n: 2, bytes: new Uint8Array([2, 255]) } });
  }

  // Concurrent additions from every window add up (a counter, not last-writer-wins).
  const added = await Promise.all(windows.map((w) => w.add('jobs/desired', 2)));
  for (const a of added) assert.equal(a.changed, true);
  await allSee(windows, (w) => w.counter('jobs/desired'), (n) => n === 6, 'the counter at 6');

  // A transaction is seen whole.
  await windows[0].transact([
    { op: 'put', channel: 'settings', key: 'theme', value: 'dark' },
    { op: 'delete', channel: 'windows', key: peers[0] },
    { op: 'add', name: 'jobs/desired', by: -1 },
  ]);
  await allSee(windows, (w) => w.counter('jobs/desired'), (n) => n === 5, 'the counter at 5');
  for (const w of windows) {
    assert.deepEqual(await w.get('settings', 'theme'), { found: true, value: 'dark' });
    assert.deepEqual(await w.channels(), ['settings', 'windows']);
  }
});

test('a change notification reaches a subscriber of another window, and names the writer', async (t) => {
  const m = await freshMesh(t);
  const [a, b] = await Promise.all([m.join(), m.join()]);
  const changes = b.changes();
  await a.put('ws', 'ws-1', { status: 'running' });
  const c = await until(changes, (c) => c.kind === 'record' && c.key === 'ws-1', 'the change of ws-1');
  assert.deepEqual(c, { kind: 'record', channel: 'ws', key: 'ws-1', by: a.peer });
  assert.deepEqual(await b.get('ws', 'ws-1'), { found: true, value: { status: 'running' } });
  assert.deepEqual(await b.get('ws', 'absent'), { found: false, value: null });
});

test('durable and replicated writes are acknowledged, and a missing acknowledgement times out', async (t) => {
  const m = await freshMesh(t);
  const [a, b] = await Promise.all([m.join(), m.join()]);
  assert.deepEqual(await a.put('c', 'k', 1, { durable: true }), { changed: true, durable: true });
  // Answered once b holds the write.
  const replicated = await a.put('c', 'k', 2, { replicated: 1, timeoutMs: 15_000 });
  assert.deepEqual(replicated, { changed: true, replicated: 1 });
  assert.deepEqual(await b.get('c', 'k'), { found: true, value: 2 });
  // There is no third peer: the acknowledgement cannot come, the write is applied anyway.
  await assert.rejects(a.put('c', 'k', 3, { replicated: 2, timeoutMs: 200 }), (e) => {
    assert.ok(e instanceof StatemeshError);
    assert.equal(e.code, ErrorCode.TIMEOUT);
    assert.deepEqual(e.data, { applied: true });
    return true;
  });
  assert.deepEqual(await a.get('c', 'k'), { found: true, value: 3 });
  // A write that changes nothing is acknowledged at once.
  assert.deepEqual(await a.put('c', 'k', 3, { replicated: 2, timeoutMs: 200 }), { changed: false, replicated: 2 });
});

test('members, the explanation and the metrics have one rendering: integer *_ms, snake_case causes', async (t) => {
  const m = await freshMesh(t);
  const [a, b] = await Promise.all([m.join(), m.join()]);
  await allSee([a, b], (w) => w.members(), (ms) => ms.length === 2 && ms.every((x) => x.live), 'two live members');
  const members = await a.members();
  assert.equal(members[0].peer, a.peer, 'this window first');
  for (const x of members) {
    assert.deepEqual(Object.keys(x).sort(), ['counter', 'death', 'eligible', 'incarnation', 'live', 'peer', 'silent_for_ms']);
    assert.ok(Number.isInteger(x.silent_for_ms), `whole milliseconds: ${x.silent_for_ms}`);
    assert.equal(x.death, null);
  }
  // Settled: the leadership no longer changes between the two reads below.
  await allSee([a, b], (w) => w.leader(), (l) => l.term !== null, 'a leader under a term');
  const why = await a.explain();
  assert.equal(why.me, a.peer);
  assert.deepEqual(why.peers.map((p) => p.peer).sort(), [a.peer, b.peer].sort());
  const leader = await a.leader();
  assert.deepEqual(
    { leader: why.leader, term: why.term, is_me: why.is_me },
    leader,
    'the explanation carries the leadership as `leader` answers it',
  );
  const stats = await a.stats();
  assert.equal(typeof stats.mesh.links, 'number');
  assert.equal(typeof stats.mesh.keys.primary, 'string');
  assert.ok(Number.isInteger(stats.mesh.propagation.p99_us));
  // The counters `Metrics` declares are there, as numbers.
  for (const counter of [
    'backlog',
    'backlog_peak',
    'writes_refused',
    'views_dropped',
    'views_sealed_sent',
    'views_sealed_received',
    'views_sealed_refused',
  ]) {
    assert.ok(Number.isInteger(stats.mesh[counter]), counter);
  }
});

// @ts-check
// The sidecar's life: a crash is reported (an event, rejected calls, ended subscriptions) and,
// when asked, the sidecar is restarted and the subscriptions carry on; close() and the host's
// exit end the child; stderr goes to the logger.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFile, chmod } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCode, Mesh, StatemeshError } from 'statemesh';
import { BIN, freeze, freshMesh, nextEvent, processGone, until, WITHIN_MS } from './helpers.mjs';

test('a crashed sidecar is reported: exit event, rejected calls, subscriptions end with the error', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join();
  const changes = mesh.changes();
  const closed = nextEvent(mesh, 'close');
  // A call that waits: an acknowledgement from a peer that does not exist.
  const waiting = mesh.put('c', 'k', 1, { replicated: 1, timeoutMs: WITHIN_MS });
  const exited = nextEvent(mesh, 'exit');
  const pid = /** @type {number} */ (mesh.pid);
  process.kill(pid, 'SIGKILL');

  const exit = await exited;
  assert.equal(exit.pid, pid);
  assert.equal(exit.signal, 'SIGKILL');
  assert.equal(exit.restarting, false);
  await assert.rejects(waiting, (e) => {
    assert.ok(e instanceof StatemeshError);
    assert.equal(e.code, ErrorCode.SIDECAR_EXITED);
    assert.match(e.message, /SIGKILL/);
    return true;
  });
  // The subscription yields what came before the crash (the put's own change), then throws.
  await assert.rejects(
    (async () => {
      for await (const c of changes) assert.equal(c.kind, 'record');
    })(),
    { code: ErrorCode.SIDECAR_EXITED },
  );
  const why = await closed;
  assert.equal(why?.code, ErrorCode.SIDECAR_EXITED);
  assert.equal(mesh.closed, true);
  assert.equal(mesh.pid, undefined);
  assert.deepEqual(mesh.leadership, { leader: null, term: null, is_me: false });
  await assert.rejects(mesh.get('c', 'k'), { code: ErrorCode.SIDECAR_EXITED });
  await mesh.close(); // closing a dead mesh is fine
});

test('with restart, a killed sidecar comes back with a new peer id and subscriptions carry on', async (t) => {
  const m = await freshMesh(t);
  const other = await m.join();
  const mesh = await m.join({ restart: { initialDelayMs: 10 } });
  await mesh.put('settings', 'theme', 'dark', { durable: true });
  const changes = mesh.changes();
  const leaderships = mesh.leaderships();
  const firstPeer = mesh.peer;
  const exited = nextEvent(mesh, 'exit');
  const restarted = nextEvent(mesh, 'restart');
  process.kill(/** @type {number} */ (mesh.pid), 'SIGKILL');

  const exit = await exited;
  assert.equal(exit.restarting, true);
  assert.equal(mesh.closed, false);
  const restart = await restarted;
  assert.equal(restart.attempt, 1);
  assert.notEqual(restart.peer, firstPeer);
  assert.equal(mesh.peer, restart.peer);
  assert.equal(mesh.pid, restart.pid);
  await mesh.ready();

  // The change iterator says changes may have been missed, then carries on.
  await until(changes, (c) => c.kind === 'resync' && c.reason === 'restart', 'the resync after the restart');
  await other.put('ws', 'after-restart', 1);
  await until(changes, (c) => c.kind === 'record' && c.key === 'after-restart', "the other window's write");
  // The durable record survived (state on disk), and the leadership iterator still runs.
  assert.deepEqual(await mesh.get('settings', 'theme'), { found: true, value: 'dark' });
  await until(leaderships, (l) => l.leader !== null && l.term !== null, 'a leader after the restart');
});

test('restarts are bounded: past maxAttempts in a row the mesh closes with the error', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join({ restart: { maxAttempts: 1, initialDelayMs: 10 } });
  /** @type {Promise<unknown>[]} */
  const refused = [];
  mesh.once('exit', () => refused.push(mesh.get('c', 'k').then(() => null, (e) => e)));
  const restarted = nextEvent(mesh, 'restart');
  process.kill(/** @type {number} */ (mesh.pid), 'SIGKILL');
  await restarted;
  // While it restarted, calls were refused at once, saying so.
  const e = await refused[0];
  assert.ok(e instanceof StatemeshError);
  assert.equal(e.code, ErrorCode.SIDECAR_EXITED);
  assert.deepEqual(e.data, { restarting: true });
  const exited = nextEvent(mesh, 'exit');
  const closed = nextEvent(mesh, 'close');
  process.kill(/** @type {number} */ (mesh.pid), 'SIGKILL');
  assert.equal((await exited).restarting, false);
  assert.equal((await closed)?.code, ErrorCode.SIDECAR_EXITED);
  assert.equal(mesh.closed, true);
  await assert.rejects(mesh.ready(), { code: ErrorCode.SIDECAR_EXITED });
});

test('a sidecar that cannot start is reported with its stderr; a missing binary is named', async (t) => {
  const m = await freshMesh(t);
  const script = path.join(m.dir, 'broken-statemesh');
  await writeFile(script, '#!/bin/sh\necho "statemesh: cannot start: this is a test" >&2\nexit 2\n');
  await chmod(script, 0o755);
  await assert.rejects(m.join({ bin: script }), (e) => {
    assert.ok(e instanceof StatemeshError);
    assert.equal(e.code, ErrorCode.SIDECAR_EXITED);
    assert.match(e.message, /code 2.*cannot start: this is a test/);
    assert.deepEqual(/** @type {any} */ (e.data).stderr, ['statemesh: cannot start: this is a test']);
    return true;
  });
  await assert.rejects(m.join({ bin: path.join(m.dir, 'nowhere') }), { code: ErrorCode.BINARY_NOT_FOUND });
  await assert.rejects(m.join({ env: { ...process.env, STATEMESH_BIN: path.join(m.dir, 'nowhere') }, bin: undefined }), {
    code: ErrorCode.BINARY_NOT_FOUND,
  });
  // A mesh that cannot be joined: the sidecar's answer to initialize.
  await assert.rejects(m.join({ secretFile: m.dir }), { code: ErrorCode.JOIN_FAILED });
});

test('close() leaves gracefully and ends the child; the logger gets the sidecar\'s stderr', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join({ env: { ...process.env, RUST_LOG: 'info' } });
  const pid = /** @type {number} */ (mesh.pid);
  const closed = nextEvent(mesh, 'close');
  const changes = mesh.changes();
  await mesh.close();
  assert.equal(await closed, null);
  assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
  assert.deepEqual(await changes.next(), { value: undefined, done: true });
  await assert.rejects(mesh.get('c', 'k'), { code: ErrorCode.MESH_CLOSED });
  const lines = /** @type {string[]} */ (m.logs.get(mesh));
  assert.ok(lines.length > 0, 'the logger received the sidecar\'s stderr');
  assert.ok(lines.some((l) => /INFO/.test(l)), `info lines: ${lines.join('\n')}`);
});

test('the host process exiting ends its sidecar', async (t) => {
  const m = await freshMesh(t);
  const observer = await m.join();
  const changes = observer.changes();
  const entry = fileURLToPath(new URL('../esm/index.mjs', import.meta.url));
  const host = `
    import { Mesh } from ${JSON.stringify(entry)};
    const mesh = await Mesh.join(${JSON.stringify(m.name)}, ${JSON.stringify(m.flags)});
    await mesh.putPresence('hosts', 'h', 1, { replicated: 1 }); // the observer holds it
    process.stdout.write(String(mesh.pid) + '\\n');
    process.exit(0); // no close(): the package's exit hook ends the sidecar
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', host], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, STATEMESH_BIN: BIN } });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  assert.equal(await nextEvent(child, 'exit'), 0);
  const sidecar = Number(out.trim());
  assert.ok(sidecar > 0, `the host printed its sidecar's pid: ${out}`);
  // The host's presence record goes with its sidecar, and the process ends.
  const gone = async () => !(await observer.get('hosts', 'h')).found && (await observer.keys('hosts')).length === 0;
  if (!(await gone())) await until(changes, gone, 'the host record gone');
  await processGone(sidecar);
});

test('requestTimeoutMs: a frozen sidecar makes calls time out instead of hanging', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join({ requestTimeoutMs: 300 });
  const pid = /** @type {number} */ (mesh.pid);
  await freeze(pid);
  t.after(() => {
    try {
      process.kill(pid, 'SIGCONT'); // if the test failed before it did
    } catch {
      // gone already
    }
  });
  await assert.rejects(mesh.get('c', 'k'), { code: ErrorCode.REQUEST_TIMEOUT, message: /get: no answer within 300 ms/ });
  process.kill(pid, 'SIGCONT');
  // The late answer is dropped; the next call is answered.
  assert.deepEqual(await mesh.get('c', 'k'), { found: false, value: null });
});

test('join options are checked', async (t) => {
  const m = await freshMesh(t);
  await assert.rejects(Mesh.join('', {}), { code: ErrorCode.INVALID_PARAMS, message: /name/ });
  // @ts-expect-error: a misspelt option
  await assert.rejects(m.join({ restart: { maxAtempts: 2 } }), { code: ErrorCode.INVALID_PARAMS, message: /maxAtempts: unknown option/ });
  // @ts-expect-error: a misspelt option
  await assert.rejects(m.join({ runtimedir: '/tmp' }), { code: ErrorCode.INVALID_PARAMS, message: /options\.runtimedir/ });
  // @ts-expect-error: a wrong type
  await assert.rejects(m.join({ suspectMs: '1000' }), { code: ErrorCode.INVALID_PARAMS, message: /suspectMs: expected a positive integer/ });
});

// @ts-check
// Test helpers: a fresh mesh (name, runtime dir, state dir, secret file) per test, windows
// that are closed when the test ends, and waits on events with a deadline.
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Mesh, findBinary } from 'statemesh';

/** Safety net only: every wait is for an event that comes within milliseconds. */
export const WITHIN_MS = 20_000;

/** The binary under test: $STATEMESH_BIN (CI sets it to cargo's build), else $PATH. */
export const BIN = (() => {
  try {
    return findBinary().path;
  } catch (e) {
    throw new Error(
      `these tests run the real statemesh binary: build it (cargo build -p statemesh-cli) and set STATEMESH_BIN=<target>/debug/statemesh (${e})`,
    );
  }
})();

/**
 * A fresh, isolated mesh for test `t`: its own name, runtime dir (sockets), state dir and
 * secret file under a temporary directory removed after the test; loopback only.
 * @param {import('node:test').TestContext} t
 */
export async function freshMesh(t) {
  const dir = await mkdtemp(path.join(tmpdir(), 'statemesh-node-'));
  const name = `test-${randomBytes(6).toString('hex')}`;
  /** @type {Mesh[]} */
  const windows = [];
  /** @type {Map<Mesh, string[]>} */
  const logs = new Map();
  t.after(async () => {
    await Promise.all(windows.map((w) => w.close()));
    await rm(dir, { recursive: true, force: true });
  });
  const flags = {
    runtimeDir: path.join(dir, 'run'),
    stateDir: path.join(dir, 'state'),
    secretFile: path.join(dir, 'secret'),
  };
  return {
    dir,
    name,
    flags,
    logs,
    /**
     * Joins one window (closed when the test ends). Its sidecar's stderr is kept in `logs`.
     * @param {import('statemesh').JoinOptions} [options]
     */
    async join(options = {}) {
      /** @type {string[]} */
      const lines = [];
      const mesh = await Mesh.join(name, { logger: (l) => lines.push(l), ...flags, ...options });
      logs.set(mesh, lines);
      windows.push(mesh);
      return mesh;
    },
  };
}

/**
 * Consumes `iterable` until `check` holds for an item; fails after the deadline. The iterator
 * is left open (a subscription can be waited on again).
 * @template T
 * @param {AsyncIterable<T>} iterable
 * @param {(item: T) => boolean | Promise<boolean>} check
 * @param {string} what
 * @returns {Promise<T>}
 */
export async function until(iterable, check, what, ms = WITHIN_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  const it = iterable[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await Promise.race([it.next(), deadline]);
      if (next.done) throw new Error(`the iteration ended before ${what}`);
      if (await check(next.value)) return next.value;
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves with the arguments of the first `event` emitted by `emitter` that passes `check`.
 * @param {import('node:events').EventEmitter} emitter
 * @param {string} event
 * @returns {Promise<any>}
 */
export function nextEvent(emitter, event, check = (/** @type {any} */ _) => true, ms = WITHIN_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${ms} ms waiting for the ${event} event`));
    }, ms);
    /** @param {any} arg */
    function on(arg) {
      if (!check(arg)) return;
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(arg);
    }
    emitter.on(event, on);
  });
}

/**
 * Waits until every window's view (re-read on each change) satisfies `check`.
 * @template T
 * @param {Mesh[]} windows
 * @param {(mesh: Mesh) => Promise<T>} read
 * @param {(value: T) => boolean} check
 * @param {string} what
 */
export async function allSee(windows, read, check, what) {
  await Promise.all(
    windows.map(async (w, i) => {
      const changes = w.changes();
      if (check(await read(w))) {
        await changes.return?.();
        return;
      }
      try {
        await until(changes, async () => check(await read(w)), `window ${i} to see ${what}`);
      } finally {
        await changes.return?.();
      }
    }),
  );
}

/**
 * Resolves once process `pid` is gone (it is not our child, so no event tells: polled).
 * @param {number} pid
 */
export async function processGone(pid, ms = WITHIN_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch (e) {
      if (/** @type {NodeJS.ErrnoException} */ (e).code === 'ESRCH') return;
      throw e;
    }
    if (Date.now() > deadline) throw new Error(`process ${pid} still runs after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * SIGSTOPs process `pid` and resolves once every one of its threads is stopped. `kill` returns
 * before the process is: the stop takes its threads one at a time as the kernel runs them, and
 * meanwhile the others go on working (a sidecar frozen this way acknowledged writes for
 * milliseconds on a loaded machine). The process is not our child, so no event tells: its
 * threads' states are polled.
 * @param {number} pid
 */
export async function freeze(pid, ms = WITHIN_MS) {
  process.kill(pid, 'SIGSTOP');
  const deadline = Date.now() + ms;
  for (;;) {
    const tasks = await readdir(`/proc/${pid}/task`);
    const states = await Promise.all(
      tasks.map(async (t) => {
        const stat = await readFile(`/proc/${pid}/task/${t}/stat`, 'utf8').catch(() => '');
        // `pid (comm) state ...`: the name may hold spaces and parentheses.
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      }),
    );
    if (states.every((s) => s === 'T' || s === 't' || s === '')) return;
    if (Date.now() > deadline) throw new Error(`process ${pid} not stopped after ${ms} ms: ${states.join('')}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

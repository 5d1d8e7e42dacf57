// The options of `Mesh.join` and of the calls that take options: their types, and their checks
// and translation to the sidecar's flags and parameters.

import { describe, isPlainObject, options } from './check';
import { aborted, invalidArgument } from './errors';
import type { Scope } from './types';

/** How a write is acknowledged (docs/sidecar.md, "Write options"). */
export interface WriteOptions {
  /** Answer once the write is on this machine's disk (fsynced). */
  durable?: boolean;
  /** Answer once this many other peers hold the write. Not with `durable`. */
  replicated?: number;
  /** How long to wait for that acknowledgement (default: the sidecar's `ackTimeoutMs`, 10 s). */
  timeoutMs?: number;
}

export interface PutOptions extends WriteOptions {
  /** `durable` (default): stays until overwritten; `presence`: gone once this window dies. */
  scope?: Scope;
}

export interface LeadOptions {
  /** Give up (TIMEOUT) if this window does not lead within this time; default: wait. */
  timeoutMs?: number;
  /** Give up (ABORTED) when this signal aborts. */
  signal?: AbortSignal;
}

export interface WaitOptions {
  /** Give up (TIMEOUT) if the wait has not ended within this time; default: wait. */
  timeoutMs?: number;
  /** Give up (ABORTED) when this signal aborts. */
  signal?: AbortSignal;
}

export interface SubscribeOptions {
  /** Ends the iteration when it aborts. */
  signal?: AbortSignal;
}

export interface RestartOptions {
  /** Restarts in a row before giving up (default 10). */
  maxAttempts?: number;
  /** The first delay (default 100 ms), multiplied by `factor` (default 2) each attempt... */
  initialDelayMs?: number;
  factor?: number;
  /** ...up to this (default 10 s). A sidecar that ran this long resets the count. */
  maxDelayMs?: number;
}

export interface JoinOptions {
  /** The `statemesh` binary; default: $STATEMESH_BIN, the binary shipped beside the package, $PATH. */
  bin?: string;
  secretFile?: string;
  runtimeDir?: string;
  stateDir?: string;
  /** Keep state on disk (default true). */
  persist?: boolean;
  /** May become the probe leader (default true). */
  eligible?: boolean;
  /** LAN mode (default false): see docs/operations.md. */
  lan?: boolean;
  /** Find peers of this machine through local sockets (default true). */
  localDiscovery?: boolean;
  listen?: string;
  peers?: string[];
  heartbeatMs?: number;
  suspectMs?: number;
  maxMessage?: number;
  ackTimeoutMs?: number;
  /** More `statemesh sidecar` flags. */
  args?: string[];
  /** The sidecar's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Who this window is, for the sidecar's logs. */
  client?: { name: string; version?: string };
  /** Receives each line the sidecar writes to stderr (default: this process's stderr, prefixed). */
  logger?: (line: string) => void;
  /** Restart the sidecar if it dies (default: no; `true` for the default backoff). */
  restart?: boolean | RestartOptions;
  /** Reject calls that answer at once if no answer comes within this time (default: none). */
  requestTimeoutMs?: number;
  /** How long `join` waits for the sidecar's `initialize` answer (default 30 s). */
  initializeTimeoutMs?: number;
}

const WRITE_OPTIONS = { durable: 'durable', replicated: 'replicated', timeoutMs: 'timeout_ms' };
const PUT_OPTIONS = { ...WRITE_OPTIONS, scope: 'scope' };

export function writeOptions(opts: object | undefined, scoped: boolean): Record<string, never> {
  return options(opts, scoped ? PUT_OPTIONS : WRITE_OPTIONS, 'options') as Record<string, never>;
}

export function subscribeSignal(opts: SubscribeOptions | undefined): AbortSignal | undefined {
  const signal = options(opts, { signal: 'signal' }, 'options')['signal'];
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw invalidArgument('options.signal', `expected an AbortSignal, got ${describe(signal)}`);
  }
  return signal;
}

/**
 * The options of a wait (`lead`, `waitBackpressure`): `timeoutMs` as the sidecar's `timeout_ms`,
 * and the abort signal, checked. Throws ABORTED if the signal has aborted already.
 */
export function waitOptions(opts: LeadOptions | WaitOptions | undefined) {
  const o = options(opts, { timeoutMs: 'timeout_ms', signal: 'signal' }, 'options');
  const signal = o['signal'];
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw invalidArgument('options.signal', `expected an AbortSignal, got ${describe(signal)}`);
  }
  const wire = o['timeout_ms'] === undefined ? {} : { timeout_ms: o['timeout_ms'] as number };
  if (signal?.aborted) throw aborted(signal);
  return { wire, signal };
}

export function restartDefaults(r: RestartOptions): Required<RestartOptions> {
  return {
    maxAttempts: r.maxAttempts ?? 10,
    initialDelayMs: r.initialDelayMs ?? 100,
    factor: r.factor ?? 2,
    maxDelayMs: r.maxDelayMs ?? 10_000,
  };
}

type Check = 'string' | 'bool' | 'ms' | 'strings' | 'env' | 'client' | 'function' | 'restart';
const JOIN_OPTIONS: Record<keyof JoinOptions, Check> = {
  bin: 'string',
  secretFile: 'string',
  runtimeDir: 'string',
  stateDir: 'string',
  persist: 'bool',
  eligible: 'bool',
  lan: 'bool',
  localDiscovery: 'bool',
  listen: 'string',
  peers: 'strings',
  heartbeatMs: 'ms',
  suspectMs: 'ms',
  maxMessage: 'ms',
  ackTimeoutMs: 'ms',
  args: 'strings',
  env: 'env',
  client: 'client',
  logger: 'function',
  restart: 'restart',
  requestTimeoutMs: 'ms',
  initializeTimeoutMs: 'ms',
};

export function checkJoinOptions(o: unknown): JoinOptions {
  if (!isPlainObject(o)) throw invalidArgument('options', `expected an object, got ${describe(o)}`);
  for (const [k, v] of Object.entries(o)) {
    const check = (JOIN_OPTIONS as Record<string, Check>)[k];
    const at = `options.${k}`;
    if (check === undefined) throw invalidArgument(at, `unknown option (known: ${Object.keys(JOIN_OPTIONS).join(', ')})`);
    if (v === undefined) continue;
    const bad = (what: string): never => {
      throw invalidArgument(at, `expected ${what}, got ${describe(v)}`);
    };
    switch (check) {
      case 'string':
        if (typeof v !== 'string' || v === '') bad('a non-empty string');
        break;
      case 'bool':
        if (typeof v !== 'boolean') bad('a boolean');
        break;
      case 'ms':
        if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) bad('a positive integer');
        break;
      case 'strings':
        if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) bad('an array of strings');
        break;
      case 'env':
        if (!isPlainObject(v)) bad('an environment object');
        break;
      case 'client':
        if (!isPlainObject(v) || typeof v['name'] !== 'string') bad('{ name, version? }');
        break;
      case 'function':
        if (typeof v !== 'function') bad('a function');
        break;
      case 'restart': {
        if (typeof v === 'boolean') break;
        const r = options(v as object, { maxAttempts: 'maxAttempts', initialDelayMs: 'initialDelayMs', factor: 'factor', maxDelayMs: 'maxDelayMs' }, at);
        for (const [rk, rv] of Object.entries(r)) {
          const ok = rk === 'factor' ? typeof rv === 'number' && rv >= 1 : typeof rv === 'number' && Number.isSafeInteger(rv) && rv >= 0;
          if (!ok) throw invalidArgument(`${at}.${rk}`, `expected ${rk === 'factor' ? 'a number >= 1' : 'a non-negative integer'}, got ${describe(rv)}`);
        }
        break;
      }
    }
  }
  return o as JoinOptions;
}

export function sidecarArgs(name: string, o: JoinOptions): string[] {
  const args = ['sidecar', '--mesh', name];
  const flag = (f: string, v: string | number | undefined): void => {
    if (v !== undefined) args.push(`--${f}`, String(v));
  };
  flag('secret-file', o.secretFile);
  flag('runtime-dir', o.runtimeDir);
  flag('state-dir', o.stateDir);
  flag('listen', o.listen);
  flag('heartbeat-ms', o.heartbeatMs);
  flag('suspect-ms', o.suspectMs);
  flag('max-message', o.maxMessage);
  flag('ack-timeout-ms', o.ackTimeoutMs);
  if (o.persist === false) args.push('--no-persist');
  if (o.eligible === false) args.push('--not-eligible');
  if (o.lan === true) args.push('--lan');
  if (o.localDiscovery === false) args.push('--no-local-discovery');
  for (const p of o.peers ?? []) flag('peer', p);
  return args.concat(o.args ?? []);
}

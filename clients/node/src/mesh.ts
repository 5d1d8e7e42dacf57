import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { findBinary } from './binary';
import { checkParams, decodeValue, DEFAULT_LIMITS, describe, isMethod, isPlainObject, METHODS, options } from './check';
import { ErrorCode, invalidArgument, StatemeshError } from './errors';
import { Feed } from './feed';
import { frame, FrameDecoder } from './framing';
import type {
  AddResult,
  BackpressureResult,
  Change,
  Explanation,
  GetResult,
  InitializeResult,
  LeaderGetResult,
  Leadership,
  Limits,
  Member,
  Method,
  Op,
  Params,
  Result,
  Resync,
  Scope,
  Stats,
  Value,
  WriteResult,
} from './types';

/** The sidecar protocol version this package speaks. */
export const PROTOCOL_VERSION = 1;

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

/** The sidecar process ended. */
export interface SidecarExit {
  pid: number | undefined;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why, when the package knows more than the exit status. */
  error: StatemeshError | null;
  /** The last lines the sidecar wrote to stderr. */
  stderr: string[];
  /** Whether a restart follows. */
  restarting: boolean;
}

export interface MeshEvents {
  /** An entry changed; read it again. */
  change: [change: Change];
  /** Change notifications were missed (`missed`, or `null` after a restart): re-read everything shown. */
  resync: [resync: Resync];
  /** The leadership this window sees changed. */
  leadership: [leadership: Leadership];
  /** The lead guard of `term` was lost. */
  leadLost: [lost: { term: number }];
  /** The sidecar died (not after `close()`). */
  exit: [exit: SidecarExit];
  /** A restarted sidecar is ready (a new peer id). */
  restart: [restart: { attempt: number; peer: string; pid: number | undefined }];
  /** The mesh is closed: `error` is null after `close()`, else why it ended. */
  close: [error: StatemeshError | null];
}

type Listener<E extends keyof MeshEvents> = (...args: MeshEvents[E]) => void;

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout | null;
}

const NO_LEADER: Leadership = Object.freeze({ leader: null, term: null, is_me: false });
const STDERR_TAIL = 20;
const CLOSE_GRACE_MS = 10_000;
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** When this process exits, every sidecar it started is told to leave (SIGTERM: a graceful leave). */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGTERM');
  });
}

/** One sidecar process and its pipe. */
class Session {
  readonly child: ChildProcess;
  readonly pending = new Map<number, Pending>();
  readonly stderr: string[] = [];
  readonly exited: Promise<SidecarExit>;
  private nextId = 1;
  private decoder: FrameDecoder;
  private failure: StatemeshError | null = null;
  startedAt = Date.now();
  limits: Limits = DEFAULT_LIMITS;
  init: InitializeResult | null = null;
  gone = false;

  constructor(
    bin: string,
    args: string[],
    env: NodeJS.ProcessEnv,
    maxMessage: number,
    logger: (line: string, pid: number | undefined) => void,
    private readonly onMessage: (m: Record<string, unknown>) => void,
  ) {
    this.decoder = new FrameDecoder(maxMessage);
    this.child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], env, windowsHide: true });
    const child = this.child;
    if (child.pid !== undefined) live.add(child);
    child.stdin?.on('error', () => {}); // a dead sidecar's EPIPE: its exit reports it
    let partial = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => {
      const lines = (partial + s).split(/\r?\n/);
      partial = lines.pop() ?? '';
      for (const line of lines) this.logLine(line, logger);
    });
    child.stderr?.on('end', () => {
      if (partial) this.logLine(partial, logger);
      partial = '';
    });
    child.stdout?.on('data', (chunk: Buffer) => {
      let messages: unknown[];
      try {
        messages = this.decoder.push(chunk);
      } catch (e) {
        this.fail(new StatemeshError(ErrorCode.PROTOCOL_VIOLATION, `the sidecar wrote an invalid message: ${(e as Error).message}`));
        return;
      }
      for (const m of messages) {
        if (!isPlainObject(m)) {
          this.fail(new StatemeshError(ErrorCode.PROTOCOL_VIOLATION, `the sidecar wrote ${describe(m)}, not a message object`));
          return;
        }
        this.dispatch(m);
      }
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      this.failure ??= new StatemeshError(ErrorCode.SPAWN_FAILED, `could not run ${bin}: ${e.message}`, { errno: e.code }, { cause: e });
    });
    this.exited = new Promise((resolve) => {
      child.on('close', (code: number | null, signal: NodeJS.Signals | null) => {
        this.gone = true;
        live.delete(child);
        resolve({ pid: child.pid, code, signal, error: this.failure, stderr: this.stderr.slice(), restarting: false });
      });
    });
  }

  private logLine(line: string, logger: (line: string, pid: number | undefined) => void): void {
    this.stderr.push(line);
    if (this.stderr.length > STDERR_TAIL) this.stderr.shift();
    try {
      logger(line, this.child.pid);
    } catch {
      // a logger's failure is not the mesh's
    }
  }

  /** Ends the process after a fault of its output (a bug on one side or the other). */
  fail(error: StatemeshError): void {
    this.failure ??= error;
    this.child.kill('SIGKILL');
  }

  private dispatch(m: Record<string, unknown>): void {
    if (typeof m['method'] === 'string') {
      this.onMessage(m);
      return;
    }
    const id = m['id'];
    const p = typeof id === 'number' ? this.pending.get(id) : undefined;
    if (p === undefined) {
      // An error with a null id: a framing problem on our side, which the checks before
      // sending exist to prevent. Nothing waits for it; the sidecar carries on.
      return;
    }
    this.pending.delete(id as number);
    if (p.timer) clearTimeout(p.timer);
    const error = m['error'];
    if (isPlainObject(error)) {
      const code = typeof error['code'] === 'number' ? error['code'] : ErrorCode.INTERNAL_ERROR;
      p.reject(new StatemeshError(code, String(error['message'] ?? 'error'), error['data']));
    } else {
      p.resolve(m['result']);
    }
  }

  /** Sends `wire` (checked params); answers arrive through `pending`. */
  send(method: string, wire: unknown, timeoutMs: number | undefined): Promise<unknown> {
    const id = this.nextId++;
    const body = JSON.stringify({ jsonrpc: '2.0', id, method, params: wire });
    const length = Buffer.byteLength(body, 'utf8');
    if (length > this.limits.max_message) {
      return Promise.reject(
        new StatemeshError(
          ErrorCode.MESSAGE_TOO_LARGE,
          `${method}: a request of ${length} bytes exceeds the sidecar's limit of ${this.limits.max_message}; it was not sent`,
          { length, max: this.limits.max_message },
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const p: Pending = { method, resolve, reject, timer: null };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new StatemeshError(ErrorCode.REQUEST_TIMEOUT, `${method}: no answer within ${timeoutMs} ms (it may still take effect)`));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      this.child.stdin?.write(frame(body));
    });
  }

  rejectAll(error: (p: Pending) => StatemeshError): void {
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(error(p));
    }
    this.pending.clear();
  }
}

/**
 * The lead guard: held while this window leads under `term`. Its writes carry the term (the
 * fencing token); `signal` aborts when the leadership is lost, the sidecar dies, the mesh
 * closes or the guard is released. One window holds at most one guard.
 */
export class LeadGuard {
  private readonly controller = new AbortController();

  /** @internal */
  constructor(
    private readonly mesh: Mesh,
    readonly term: number,
  ) {}

  /** Aborts (with a StatemeshError as its reason) once this guard is no longer valid. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get lost(): boolean {
    return this.controller.signal.aborted;
  }

  /** Resolves once the guard is lost, with the reason. */
  whenLost(): Promise<StatemeshError> {
    const signal = this.controller.signal;
    if (signal.aborted) return Promise.resolve(signal.reason as StatemeshError);
    return new Promise((resolve) => signal.addEventListener('abort', () => resolve(signal.reason as StatemeshError), { once: true }));
  }

  /** Writes a leader record under this guard's term. */
  async put(channel: string, key: string, value: Value): Promise<void> {
    this.check();
    await this.guarded(this.mesh.call('lead_put', { channel, key, value, term: this.term }));
  }

  /** Deletes a leader record under this guard's term. */
  async delete(channel: string, key: string): Promise<void> {
    this.check();
    await this.guarded(this.mesh.call('lead_delete', { channel, key, term: this.term }));
  }

  /** Drops the guard (leadership itself does not change). */
  async release(): Promise<boolean> {
    if (this.lost) return false;
    this.abort(new StatemeshError(ErrorCode.NOT_LEADER, `the lead guard of term ${this.term} was released`, { term: this.term }));
    const r = await this.mesh.call('lead_release', {});
    return r.released;
  }

  /** @internal */
  abort(reason: StatemeshError): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  private check(): void {
    if (this.lost) {
      const reason = this.controller.signal.reason as StatemeshError;
      throw new StatemeshError(ErrorCode.NOT_LEADER, `the lead guard of term ${this.term} is lost: ${reason.message}`, {
        term: this.term,
      });
    }
  }

  private async guarded<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      if (e instanceof StatemeshError && e.code === ErrorCode.NOT_LEADER) this.abort(e);
      throw e;
    }
  }
}

export declare interface Mesh {
  on<E extends keyof MeshEvents>(event: E, listener: Listener<E>): this;
  once<E extends keyof MeshEvents>(event: E, listener: Listener<E>): this;
  off<E extends keyof MeshEvents>(event: E, listener: Listener<E>): this;
  emit<E extends keyof MeshEvents>(event: E, ...args: MeshEvents[E]): boolean;
}

/**
 * This window's membership of a mesh: a supervised `statemesh sidecar` child process.
 *
 * ```ts
 * const mesh = await Mesh.join('my-workspace');
 * await mesh.put('windows', mesh.peer, { title: 'main.ts' }, { scope: 'presence' });
 * for await (const c of mesh.changes()) console.log(c);
 * ```
 */
export class Mesh extends EventEmitter {
  private session: Session | null = null;
  private state: 'starting' | 'ready' | 'restarting' | 'closing' | 'closed' = 'starting';
  private current: Leadership = NO_LEADER;
  private guard: LeadGuard | null = null;
  private acquiring = 0;
  private readonly lostTerms = new Set<number>();
  private readonly changeFeeds = new Set<Feed<Change | Resync>>();
  private readonly leadershipFeeds = new Set<Feed<Leadership>>();
  private readyWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private restartTimer: NodeJS.Timeout | null = null;
  private restartAttempt = 0;
  private closing: Promise<void> | null = null;
  private ending: StatemeshError | null = null;

  private constructor(
    readonly name: string,
    private readonly bin: string,
    private readonly args: string[],
    private readonly opts: JoinOptions,
    private readonly restartOptions: Required<RestartOptions> | null,
  ) {
    super();
  }

  /**
   * Starts `statemesh sidecar` for mesh `name` and resolves once it has joined (its
   * `initialize` answer). Rejects with a StatemeshError: BINARY_NOT_FOUND, SPAWN_FAILED,
   * JOIN_FAILED, SIDECAR_EXITED (with the sidecar's last stderr lines in `data.stderr`), or
   * INVALID_PARAMS for bad options.
   */
  static async join(name: string, joinOptions: JoinOptions = {}): Promise<Mesh> {
    if (typeof name !== 'string' || name === '') throw invalidArgument('name', `expected a non-empty mesh name, got ${describe(name)}`);
    const o = checkJoinOptions(joinOptions);
    const bin = findBinary(o.bin, o.env ?? process.env).path;
    const restart = o.restart === undefined || o.restart === false ? null : restartDefaults(o.restart === true ? {} : o.restart);
    const mesh = new Mesh(name, bin, sidecarArgs(name, o), o, restart);
    try {
      await mesh.start();
    } catch (e) {
      mesh.state = 'closed';
      throw e;
    }
    mesh.state = 'ready';
    return mesh;
  }

  // ---- what this window is ----

  /** This window's peer id (a new one after each restart of the sidecar). */
  get peer(): string {
    return this.info.peer;
  }

  /** The running sidecar's `initialize` answer (peer id, server version, limits). */
  get info(): InitializeResult {
    const init = this.session?.init;
    if (!init || this.state === 'closed') throw new StatemeshError(ErrorCode.SIDECAR_EXITED, 'no sidecar is running');
    return init;
  }

  /** The sidecar's process id, `undefined` while none runs. */
  get pid(): number | undefined {
    return this.session && !this.session.gone ? this.session.child.pid : undefined;
  }

  /** The leadership as this window sees it now (no leader while the sidecar is down). */
  get leadership(): Leadership {
    return this.current;
  }

  /** Whether this window leads now, under a known term. */
  get isLeader(): boolean {
    return this.current.is_me;
  }

  /** True once the mesh is closed (by `close()`, or by a sidecar that died and was not restarted). */
  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Resolves when a sidecar is ready (at once unless it is restarting); rejects if the mesh closes. */
  ready(): Promise<void> {
    if (this.state === 'ready') return Promise.resolve();
    if (this.state === 'closed' || this.state === 'closing') return Promise.reject(this.closedError());
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  // ---- the protocol ----

  /**
   * Sends one request of the protocol, params as on the wire (docs/sidecar.md). Params are
   * checked first: a bad one rejects with INVALID_PARAMS and nothing is sent.
   */
  request<M extends Method>(method: M, params: Params<M>): Promise<Result<M>> {
    return this.call(method, params, true);
  }

  /** @internal */
  async call<M extends Method>(method: M, params: Params<M>, raw = false): Promise<Result<M>> {
    if (!isMethod(method)) {
      throw invalidArgument('method', `unknown method ${JSON.stringify(method)} (protocol ${PROTOCOL_VERSION} has: ${METHODS.join(', ')})`);
    }
    const session = this.usable();
    if (method === 'initialize' || method === 'shutdown') {
      throw invalidArgument('method', `${method} is the package's to send: use Mesh.join and close()`);
    }
    const wire = checkParams(method, params, session.limits, raw);
    const waits =
      method === 'lead_acquire' ||
      method === 'backpressure_wait' ||
      wire['durable'] === true ||
      wire['replicated'] !== undefined;
    const result = await session.send(method, wire, waits ? undefined : this.opts.requestTimeoutMs);
    return result as Result<M>;
  }

  // ---- reads ----

  async get<V extends Value = Value>(channel: string, key: string): Promise<GetResult<V>> {
    const r = await this.call('get', { channel, key });
    return { found: r.found, value: decodeValue(r.value) } as GetResult<V>;
  }

  async keys(channel: string): Promise<string[]> {
    return this.call('keys', { channel });
  }

  async channels(): Promise<string[]> {
    return this.call('channels', {});
  }

  async counter(name: string): Promise<number> {
    return this.call('counter', { name });
  }

  async leaderGet<V extends Value = Value>(channel: string, key: string): Promise<LeaderGetResult<V>> {
    const r = await this.call('leader_get', { channel, key });
    return { ...r, value: decodeValue(r.value) } as LeaderGetResult<V>;
  }

  async leaderKeys(channel: string): Promise<string[]> {
    return this.call('leader_keys', { channel });
  }

  async members(): Promise<Member[]> {
    return this.call('members', {});
  }

  /** Asks the sidecar who leads (the `leadership` property is the last notified value). */
  async leader(): Promise<Leadership> {
    return this.call('leader', {});
  }

  async stats(): Promise<Stats> {
    return this.call('stats', {});
  }

  async explain(): Promise<Explanation> {
    return this.call('explain', {});
  }

  // ---- writes ----

  async put(channel: string, key: string, value: Value, opts?: PutOptions): Promise<WriteResult> {
    return this.call('put', { channel, key, value, ...writeOptions(opts, true) });
  }

  /** Like `put` with `scope: 'presence'`: the record disappears once this window dies. */
  async putPresence(channel: string, key: string, value: Value, opts?: WriteOptions): Promise<WriteResult> {
    return this.call('put_presence', { channel, key, value, ...writeOptions(opts, false) });
  }

  async delete(channel: string, key: string, opts?: WriteOptions): Promise<WriteResult> {
    return this.call('delete', { channel, key, ...writeOptions(opts, false) });
  }

  /** Adds `by` to a counter; additions from several windows add up. */
  async add(name: string, by: number, opts?: PutOptions): Promise<AddResult> {
    return this.call('add', { name, by, ...writeOptions(opts, true) });
  }

  /** Several writes as one atomic change. */
  async transact(ops: Op[], opts?: WriteOptions): Promise<WriteResult> {
    return this.call('transact', { ops, ...writeOptions(opts, false) });
  }

  /**
   * Resolves once this window's writes are no longer pushed back — at once unless its backlog
   * (writes its peers have not all acknowledged) reached the soft bound, else once it is back
   * under half of it — with the backlog then. A writer in a loop awaits it between writes, or
   * after a write rejected with BUSY, and then writes again. Rejects with TIMEOUT (`timeoutMs`),
   * ABORTED (`signal`), MESH_CLOSED or SIDECAR_EXITED.
   */
  async waitBackpressure(opts?: WaitOptions): Promise<BackpressureResult> {
    const { wire, signal } = waitOptions(opts);
    const answer = this.call('backpressure_wait', wire);
    if (signal === undefined) return answer;
    return new Promise((resolve, reject) => {
      const onAbort = (): void => reject(aborted(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      answer.then(
        (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        },
        (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  }

  // ---- leadership ----

  /**
   * Waits until this window leads and resolves with its lead guard. Rejects with TIMEOUT
   * (`timeoutMs`), ABORTED (`signal`), MESH_CLOSED or SIDECAR_EXITED.
   */
  async lead(opts?: LeadOptions): Promise<LeadGuard> {
    const { wire, signal } = waitOptions(opts);
    const session = this.usable();
    checkParams('lead_acquire', wire, session.limits, false);
    this.acquiring++;
    const answer = this.call('lead_acquire', wire).finally(() => this.acquiring--);
    const guard = answer.then(({ term }) => this.guardFor(term, session));
    if (signal === undefined) {
      const g = await guard;
      this.handedOut.add(g);
      return g;
    }
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        reject(aborted(signal));
        // The sidecar still holds the guard it acquires for this wait: drop it, unless someone
        // else is waiting for (or already holds) a guard.
        guard.then(
          (g) => {
            if (this.acquiring === 0 && g === this.guard && !this.handedOut.has(g)) void g.release().catch(() => {});
          },
          () => {},
        );
      };
      signal.addEventListener('abort', onAbort, { once: true });
      guard.then(
        (g) => {
          signal.removeEventListener('abort', onAbort);
          if (signal.aborted) return;
          this.handedOut.add(g);
          resolve(g);
        },
        (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  }

  private readonly handedOut = new WeakSet<LeadGuard>();

  /** The guard held now, if any. */
  get leadGuard(): LeadGuard | null {
    return this.guard && !this.guard.lost ? this.guard : null;
  }

  private guardFor(term: number, session: Session): LeadGuard {
    if (session !== this.session) {
      throw new StatemeshError(ErrorCode.SIDECAR_EXITED, 'the sidecar exited while leadership was acquired');
    }
    if (this.guard && this.guard.term === term && !this.guard.lost) return this.guard;
    // The sidecar holds one guard: a new term replaces the old one.
    this.guard?.abort(new StatemeshError(ErrorCode.NOT_LEADER, `the lead guard of term ${this.guard.term} was replaced by term ${term}`));
    this.guard = new LeadGuard(this, term);
    if (this.lostTerms.has(term)) this.guard.abort(leadershipLost(term));
    return this.guard;
  }

  // ---- subscriptions ----

  /**
   * Every change from now on, as an async iterable. A `resync` item means changes were missed
   * (the client was too slow, or the sidecar restarted): re-read what you show.
   */
  changes(opts?: SubscribeOptions): AsyncIterableIterator<Change | Resync> {
    const signal = subscribeSignal(opts);
    const feed: Feed<Change | Resync> = new Feed<Change | Resync>(() => this.changeFeeds.delete(feed), {
      max: 4096,
      overflow: (n) => ({ kind: 'resync', reason: 'lagged', missed: n }),
    });
    return this.subscribe(feed, this.changeFeeds, signal);
  }

  /** The leadership now, then each time it changes (only the newest is kept for a slow reader). */
  leaderships(opts?: SubscribeOptions): AsyncIterableIterator<Leadership> {
    const signal = subscribeSignal(opts);
    const feed: Feed<Leadership> = new Feed(() => this.leadershipFeeds.delete(feed), { coalesce: true });
    feed.push(this.current);
    return this.subscribe(feed, this.leadershipFeeds, signal);
  }

  private subscribe<T>(feed: Feed<T>, set: Set<Feed<T>>, signal: AbortSignal | undefined): Feed<T> {
    if (this.state === 'closed' || this.state === 'closing') {
      feed.end(this.ending ?? undefined);
      return feed;
    }
    set.add(feed);
    if (signal) {
      if (signal.aborted) feed.end();
      else signal.addEventListener('abort', () => feed.end(), { once: true });
    }
    return feed;
  }

  // ---- lifecycle ----

  /**
   * Leaves the mesh gracefully (the next leader takes over at once) and ends the sidecar.
   * Calls still waiting are answered first (MESH_CLOSED for those that needed the mesh).
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    if (this.state === 'closed') return Promise.resolve();
    this.state = 'closing';
    this.closing = (async () => {
      if (this.restartTimer) clearTimeout(this.restartTimer);
      this.restartTimer = null;
      const session = this.session;
      if (session && !session.gone) {
        const shutdown = session.send('shutdown', {}, undefined).catch(() => null);
        const killer = setTimeout(() => session.child.kill('SIGKILL'), CLOSE_GRACE_MS);
        await Promise.race([shutdown, session.exited]);
        session.child.stdin?.end();
        await session.exited;
        clearTimeout(killer);
      }
      this.finish(null);
    })();
    return this.closing;
  }

  // ---- supervision ----

  private usable(): Session {
    if (this.state === 'closed' || this.state === 'closing') throw this.closedError();
    const s = this.session;
    if (!s || s.gone || !s.init) {
      const restarting = this.state === 'restarting';
      const why = restarting ? 'the sidecar is being restarted' : 'the sidecar exited';
      throw new StatemeshError(ErrorCode.SIDECAR_EXITED, why, { restarting });
    }
    return s;
  }

  private closedError(): StatemeshError {
    if (this.ending) return this.ending;
    return new StatemeshError(ErrorCode.MESH_CLOSED, 'the mesh is closed');
  }

  /** Spawns a sidecar and initializes it; rejects (with the process ended) if it cannot. */
  private async start(): Promise<void> {
    const o = this.opts;
    const logger = o.logger ?? ((line: string, pid?: number) => process.stderr.write(`statemesh sidecar[${pid}]: ${line}\n`));
    installExitHook();
    const session: Session = new Session(
      this.bin,
      this.args,
      o.env ?? process.env,
      o.maxMessage ?? DEFAULT_LIMITS.max_message,
      logger,
      (m) => this.notified(session, m),
    );
    this.session = session;
    const exitedEarly = session.exited.then((exit) => {
      throw exit.error ??
        new StatemeshError(
          ErrorCode.SIDECAR_EXITED,
          `the sidecar exited before joining the mesh (code ${exit.code}, signal ${exit.signal})` +
            (exit.stderr.length ? `: ${exit.stderr[exit.stderr.length - 1]}` : ''),
          { code: exit.code, signal: exit.signal, stderr: exit.stderr },
        );
    });
    const timeoutMs = o.initializeTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new StatemeshError(ErrorCode.TIMEOUT, `the sidecar did not answer initialize within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    const client = o.client ?? { name: 'statemesh (node)' };
    try {
      const init = (await Promise.race([
        session.send('initialize', { protocol: PROTOCOL_VERSION, client }, undefined),
        exitedEarly,
        timedOut,
      ])) as InitializeResult;
      session.init = init;
      session.limits = { ...DEFAULT_LIMITS, ...init.limits };
      session.startedAt = Date.now();
    } catch (e) {
      session.child.kill('SIGKILL');
      session.rejectAll(() => (e instanceof StatemeshError ? e : new StatemeshError(ErrorCode.SIDECAR_EXITED, String(e))));
      await session.exited;
      throw e;
    } finally {
      clearTimeout(timer);
    }
    exitedEarly.catch(() => {});
    void session.exited.then((exit) => this.sidecarExited(session, exit));
    this.setLeadership(session.init.leadership);
  }

  private notified(session: Session, m: Record<string, unknown>): void {
    // Delivered on a later turn of the event loop, in order: code that awaits `join` and
    // then subscribes sees every notification sent after the `initialize` answer.
    setImmediate(() => {
      if (session !== this.session || this.state === 'closed') return;
      const params = (isPlainObject(m['params']) ? m['params'] : {}) as Record<string, unknown>;
      switch (m['method']) {
        case 'change': {
          const c = params as unknown as Change;
          for (const f of this.changeFeeds) f.push(c);
          this.emit('change', c);
          break;
        }
        case 'lagged': {
          const r: Resync = { kind: 'resync', reason: 'lagged', missed: Number(params['missed']) };
          for (const f of this.changeFeeds) f.push(r);
          this.emit('resync', r);
          break;
        }
        case 'leadership':
          this.setLeadership(params as unknown as Leadership);
          break;
        case 'lead_lost': {
          const term = Number(params['term']);
          if (this.guard && this.guard.term === term) {
            this.guard.abort(leadershipLost(term));
          } else {
            // The guard may not exist yet: `lead_lost` can overtake the `lead_acquire` answer
            // that hands it out (both are written as they happen). Remember the term.
            this.lostTerms.add(term);
            if (this.lostTerms.size > 16) this.lostTerms.delete(this.lostTerms.values().next().value as number);
          }
          this.emit('leadLost', { term });
          break;
        }
        default:
          break; // notifications of a later protocol: ignored
      }
    });
  }

  private setLeadership(l: Leadership): void {
    const next: Leadership = { leader: l.leader ?? null, term: l.term ?? null, is_me: l.is_me === true };
    const prev = this.current;
    if (prev.leader === next.leader && prev.term === next.term && prev.is_me === next.is_me) return;
    this.current = next;
    for (const f of this.leadershipFeeds) f.push(next);
    this.emit('leadership', next);
  }

  private sidecarExited(session: Session, exit: SidecarExit): void {
    if (session !== this.session || this.state === 'closing' || this.state === 'closed') return;
    if (this.restartOptions && Date.now() - session.startedAt >= this.restartOptions.maxDelayMs) this.restartAttempt = 0;
    const willRestart = this.restartOptions !== null && this.restartAttempt < this.restartOptions.maxAttempts;
    const why = exit.error?.message ?? `code ${exit.code}, signal ${exit.signal}`;
    const error = new StatemeshError(ErrorCode.SIDECAR_EXITED, `the sidecar exited (${why})`, {
      code: exit.code,
      signal: exit.signal,
      stderr: exit.stderr,
      restarting: willRestart,
    });
    // The state first: listeners of what follows see calls refused as they will be.
    if (willRestart) this.state = 'restarting';
    session.rejectAll(() => error);
    this.guard?.abort(error);
    this.setLeadership(NO_LEADER);
    this.emit('exit', { ...exit, restarting: willRestart });
    if (willRestart) this.scheduleRestart();
    else this.finish(error);
  }

  private scheduleRestart(): void {
    const r = this.restartOptions as Required<RestartOptions>;
    if (this.restartAttempt >= r.maxAttempts) {
      this.finish(new StatemeshError(ErrorCode.SIDECAR_EXITED, `the sidecar could not be restarted after ${r.maxAttempts} attempts`));
      return;
    }
    const attempt = ++this.restartAttempt;
    const delay = Math.min(r.initialDelayMs * r.factor ** (attempt - 1), r.maxDelayMs);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.state !== 'restarting') return;
      this.start().then(
        () => {
          if (this.state !== 'restarting') {
            // closed meanwhile: close() did not see this session
            this.session?.child.kill('SIGTERM');
            return;
          }
          this.state = 'ready';
          const resync: Resync = { kind: 'resync', reason: 'restart', missed: null };
          for (const f of this.changeFeeds) f.push(resync);
          this.emit('resync', resync);
          this.emit('restart', { attempt, peer: this.peer, pid: this.pid });
          const waiters = this.readyWaiters;
          this.readyWaiters = [];
          for (const w of waiters) w.resolve();
        },
        () => {
          if (this.state === 'restarting') this.scheduleRestart();
        },
      );
    }, delay);
  }

  private finish(error: StatemeshError | null): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.ending = error;
    const closed = error ?? new StatemeshError(ErrorCode.MESH_CLOSED, 'the mesh is closed');
    this.session?.rejectAll(() => closed);
    this.guard?.abort(closed);
    this.setLeadership(NO_LEADER);
    for (const f of [...this.changeFeeds]) f.end(error ?? undefined);
    for (const f of [...this.leadershipFeeds]) f.end(error ?? undefined);
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.reject(closed);
    this.emit('close', error);
  }
}

// ---- options ----

const WRITE_OPTIONS = { durable: 'durable', replicated: 'replicated', timeoutMs: 'timeout_ms' };
const PUT_OPTIONS = { ...WRITE_OPTIONS, scope: 'scope' };

function writeOptions(opts: object | undefined, scoped: boolean): Record<string, never> {
  return options(opts, scoped ? PUT_OPTIONS : WRITE_OPTIONS, 'options') as Record<string, never>;
}

function subscribeSignal(opts: SubscribeOptions | undefined): AbortSignal | undefined {
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
function waitOptions(opts: LeadOptions | WaitOptions | undefined) {
  const o = options(opts, { timeoutMs: 'timeout_ms', signal: 'signal' }, 'options');
  const signal = o['signal'];
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw invalidArgument('options.signal', `expected an AbortSignal, got ${describe(signal)}`);
  }
  const wire = o['timeout_ms'] === undefined ? {} : { timeout_ms: o['timeout_ms'] as number };
  if (signal?.aborted) throw aborted(signal);
  return { wire, signal };
}

function leadershipLost(term: number): StatemeshError {
  return new StatemeshError(ErrorCode.NOT_LEADER, `the leadership of term ${term} was lost`, { term });
}

function aborted(signal: AbortSignal): StatemeshError {
  return new StatemeshError(ErrorCode.ABORTED, 'the wait was aborted', undefined, { cause: signal.reason });
}

function restartDefaults(r: RestartOptions): Required<RestartOptions> {
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

function checkJoinOptions(o: unknown): JoinOptions {
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

function sidecarArgs(name: string, o: JoinOptions): string[] {
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

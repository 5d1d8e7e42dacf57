import { EventEmitter } from 'node:events';
import { findBinary } from './binary';
import { checkParams, decodeValue, DEFAULT_LIMITS, describe, isMethod, isPlainObject, METHODS } from './check';
import { aborted, ErrorCode, invalidArgument, leadershipLost, StatemeshError } from './errors';
import { Feed } from './feed';
import { LeadGuard } from './guard';
import {
  checkJoinOptions,
  restartDefaults,
  sidecarArgs,
  subscribeSignal,
  waitOptions,
  writeOptions,
  type JoinOptions,
  type LeadOptions,
  type PutOptions,
  type RestartOptions,
  type SubscribeOptions,
  type WaitOptions,
  type WriteOptions,
} from './options';
import { installExitHook, Session, type SidecarExit } from './session';
import type {
  AddResult,
  BackpressureResult,
  BackpressureState,
  Change,
  Explanation,
  GetResult,
  InitializeResult,
  LeaderGetResult,
  Leadership,
  Member,
  Method,
  Op,
  Params,
  Result,
  Resync,
  Stats,
  Value,
  WriteResult,
} from './types';

/** The sidecar protocol version this package speaks. */
export const PROTOCOL_VERSION = 1;

export interface MeshEvents {
  /** An entry changed; read it again. */
  change: [change: Change];
  /** Change notifications were missed (`missed`, or `null` after a restart): re-read everything shown. */
  resync: [resync: Resync];
  /** The leadership this window sees changed. */
  leadership: [leadership: Leadership];
  /** The lead guard of `term` was lost. */
  leadLost: [lost: { term: number }];
  /** Writes began (`pressed: true`) or ceased to be pushed back; see `waitBackpressure()`. */
  backpressure: [state: BackpressureState];
  /** The sidecar died (not after `close()`). */
  exit: [exit: SidecarExit];
  /** A restarted sidecar is ready (a new peer id). */
  restart: [restart: { attempt: number; peer: string; pid: number | undefined }];
  /** The mesh is closed: `error` is null after `close()`, else why it ended. */
  close: [error: StatemeshError | null];
}

type Listener<E extends keyof MeshEvents> = (...args: MeshEvents[E]) => void;

const NO_LEADER: Leadership = Object.freeze({ leader: null, term: null, is_me: false });
const CLOSE_GRACE_MS = 10_000;

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
        case 'backpressure':
          this.emit('backpressure', { pressed: params['pressed'] === true, backlog: Number(params['backlog']) });
          break;
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

// One `statemesh sidecar` child process and its pipe: requests matched to their answers by id,
// notifications handed on, the tail of its stderr kept, its exit reported.

import { spawn, type ChildProcess } from 'node:child_process';
import { DEFAULT_LIMITS, describe, isPlainObject } from './check';
import { ErrorCode, StatemeshError } from './errors';
import { frame, FrameDecoder } from './framing';
import type { InitializeResult, Limits } from './types';

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

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout | null;
}

const STDERR_TAIL = 20;
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** When this process exits, every sidecar it started is told to leave (SIGTERM: a graceful leave). */
export function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGTERM');
  });
}

/** One sidecar process and its pipe. */
export class Session {
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

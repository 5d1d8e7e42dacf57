// The lead guard a window holds while it leads (`Mesh.lead`).

import { ErrorCode, StatemeshError } from './errors';
import type { Mesh } from './mesh';
import type { Value } from './types';

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

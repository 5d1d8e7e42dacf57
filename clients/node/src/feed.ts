import { StatemeshError } from './errors';

/**
 * A subscription: an async iterator fed by the mesh. It ends when the mesh is closed, when
 * the caller's signal aborts or when the loop is left (`break`, `return()`); it throws when the
 * sidecar died and was not restarted.
 */
export class Feed<T> implements AsyncIterableIterator<T> {
  private items: T[] = [];
  private dropped = 0;
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null;
  private done = false;
  private failure: StatemeshError | null = null;

  /**
   * `coalesce`: keep only the newest item (leadership: the last one is the current state).
   * Otherwise at most `max` items wait; beyond, they are counted and `overflow(n)` is yielded
   * once the queue drains.
   */
  constructor(
    private readonly detach: () => void,
    private readonly options: { coalesce?: boolean; max?: number; overflow?: (dropped: number) => T } = {},
  ) {}

  push(item: T): void {
    if (this.done) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.options.coalesce) {
      this.items = [item];
    } else if (this.items.length >= (this.options.max ?? Infinity) && this.options.overflow) {
      this.dropped++;
    } else {
      this.items.push(item);
    }
  }

  /** Ends the iteration: normally, or (with an error) by throwing it once the queue drains. */
  end(error?: StatemeshError): void {
    if (this.done) return;
    this.done = true;
    this.detach();
    if (error) this.failure = error;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      this.settleDone(w);
    }
  }

  next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
    if (this.dropped > 0 && this.options.overflow) {
      const n = this.dropped;
      this.dropped = 0;
      return Promise.resolve({ value: this.options.overflow(n), done: false });
    }
    if (this.done) {
      return new Promise((resolve, reject) => this.settleDone({ resolve, reject }));
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.items = [];
    this.dropped = 0;
    this.failure = null;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private settleDone(w: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }): void {
    const failure = this.failure;
    this.failure = null;
    if (failure) w.reject(failure);
    else w.resolve({ value: undefined, done: true });
  }
}

// The sidecar protocol's types (docs/sidecar.md), as they travel on the wire.

/** A JSON value as stored in the mesh. `Uint8Array` travels as `{"$bytes": "<base64>"}`. */
export type Value = null | boolean | number | string | Uint8Array | Value[] | { [key: string]: Value };

export type Scope = 'durable' | 'presence';

/** Who leads, as this window sees it. */
export interface Leadership {
  /** The leader's peer id, `null` while no peer qualifies (the first ~600 ms of a mesh). */
  leader: string | null;
  /** The leadership's term, `null` while the leader's claim is pending. */
  term: number | null;
  /** True when this window leads under a known term. */
  is_me: boolean;
}

export interface Limits {
  max_message: number;
  max_name: number;
  max_depth: number;
}

export interface InitializeResult {
  protocol: number;
  server: { name: string; version: string };
  peer: string;
  mesh: string;
  leadership: Leadership;
  limits: Limits;
}

export type GetResult<V = Value> = { found: true; value: V } | { found: false; value: null };
export type LeaderGetResult<V = Value> =
  | { found: true; value: V; term: number; term_leader: string }
  | { found: false; value: null; term: null; term_leader: null };

/**
 * One member of the mesh as this window sees it (the Rust crate's `Member`, rendered by serde:
 * durations are whole milliseconds in `*_ms` fields).
 */
export interface Member {
  peer: string;
  /** Its highest known incarnation. */
  incarnation: number;
  /** Its highest known heartbeat counter. */
  counter: number;
  live: boolean;
  eligible: boolean;
  /** Time since fresh news of it, on this machine's clock (0 for this window itself). */
  silent_for_ms: number;
  /** Why it was judged dead, if it was. */
  death: null | 'timeout' | 'link_closed' | 'left';
}

export interface WriteResult {
  changed: boolean;
  /** Present when the write waited for the disk. */
  durable?: true;
  /** Present when the write waited for k peers. */
  replicated?: number;
}

export interface AddResult extends WriteResult {
  /** The counter as this window sees it after the addition. */
  value: number;
}

/** One op of `transact`. */
export type Op =
  | { op: 'put'; channel: string; key: string; value: Value; scope?: Scope }
  | { op: 'delete'; channel: string; key: string }
  | { op: 'add'; name: string; by: number; scope?: Scope };

/** A summary of recent delays, in microseconds. */
export interface Delays {
  samples: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
}

/**
 * What this window's mesh did since it joined (the Rust crate's `Metrics`). Its fields are not
 * stable API: more may come, and some may go, in a minor release.
 */
export interface Metrics {
  leadership_changes: number;
  sync_in: number;
  sync_out: number;
  sync_resets: number;
  syncs_owed_by_views: number;
  frames_in: number;
  frames_out: number;
  bytes_in: number;
  bytes_out: number;
  decode_errors: number;
  auth_failures: number;
  dial_failures: number;
  probes: number;
  probe_failures: number;
  dial_candidates: number;
  candidates_forgotten: number;
  mdns_peers_found: number | null;
  discovery_warning: string | null;
  links: number;
  links_opened: number;
  keys: { primary: string; accepted: string[]; file: string | null };
  link_keys: Record<string, string>;
  key_renewals: number;
  key_renewal_failures: number;
  persist_errors: number;
  propagation: Delays;
  freezes: number;
  suspicions_refuted: number;
  tick_late: Delays;
  driver_turns: Delays;
  /** Entries changed by local writes the live linked peers have not all acknowledged (a write weighs the records and counter entries it changed), plus frames queued. */
  backlog: number;
  /** The largest backlog seen. */
  backlog_peak: number;
  /** Writes refused for backpressure. */
  writes_refused: number;
  /** Heartbeat views dropped unread (newer ones filled their queue). */
  views_dropped: number;
  /** Views sent sealed beside the links' QUIC connections. */
  views_sealed_sent: number;
  /** Sealed views received that opened. */
  views_sealed_received: number;
  /** Datagrams on the view socket that did not open (forged, stale, for a closed link). */
  views_sealed_refused: number;
  [more: string]: unknown;
}

export interface Stats {
  /** The mesh's metrics. */
  mesh: Metrics;
  /** The sidecar's own counters. */
  sidecar: Record<string, number>;
  [more: string]: unknown;
}

/** The mesh keyring by key ids (`keyring_*` methods; see docs/security.md, *Keyrings*). */
export interface KeyringInfo {
  primary: string;
  accepted: string[];
  file: string | null;
  link_keys: Record<string, string>;
  [more: string]: unknown;
}

/**
 * A term: its number and the window that leads under it. Two windows may have led under one
 * number (they claimed at the same moment), never under one term; terms order by number, then
 * by leader id.
 */
export interface TermId {
  term: number;
  term_leader: string;
}

/**
 * Why this window leads or not (the Rust crate's `Explanation`): the leadership's fields
 * inline, the terms seen, every member. A diagnostic: its fields are not stable API.
 */
export interface Explanation extends Leadership {
  /** This window's peer id. */
  me: string;
  /** This window's incarnation. */
  incarnation: number;
  max_term: number;
  /** The leader of the newest term this window knows (with `max_term`). */
  max_term_leader: string | null;
  me_candidate: boolean;
  /** Every member, this window first. */
  peers: Member[];
  [more: string]: unknown;
}

/** An entry changed (written here or by a peer, deleted, hidden or shown): read it again. */
export interface Change {
  kind: 'record' | 'counter' | 'leader';
  /** Empty for counters. */
  channel: string;
  /** The record's key, or the counter's name. */
  key: string;
  /** The writer's peer id, `null` when unknown (e.g. a deletion). */
  by: string | null;
}

/**
 * Changes were missed: re-read what you show. `lagged`: the sidecar dropped `missed`
 * notifications (the client read too slowly); `restart`: the sidecar was restarted.
 */
export interface Resync {
  kind: 'resync';
  reason: 'lagged' | 'restart';
  missed: number | null;
}

/** What `backpressure_wait` answers: the backlog when the wait ended. */
export interface BackpressureResult {
  /** This window's writes its live linked peers have not all acknowledged, plus the frames queued to them. */
  backlog: number;
}

/** The `backpressure` notification: writes began (`pressed`) or ceased to be pushed back. */
export interface BackpressureState {
  /** Whether writes are pushed back now (the backlog reached the soft bound, and has not yet gone back under half of it). */
  pressed: boolean;
  /** The backlog as last counted when the change was seen. */
  backlog: number;
}

/** The write options of `put`, `put_presence`, `delete`, `add` and `transact`, on the wire. */
export interface WireAck {
  durable?: boolean;
  replicated?: number;
  timeout_ms?: number;
}

/** Every method of protocol 1 with its params and result, as on the wire. */
export interface Methods {
  initialize: { params: { protocol?: number; client?: unknown }; result: InitializeResult };
  shutdown: { params: Record<string, never>; result: null };
  get: { params: { channel: string; key: string }; result: GetResult };
  keys: { params: { channel: string }; result: string[] };
  channels: { params: Record<string, never>; result: string[] };
  put: { params: { channel: string; key: string; value: Value; scope?: Scope } & WireAck; result: WriteResult };
  put_presence: { params: { channel: string; key: string; value: Value; scope?: 'presence' } & WireAck; result: WriteResult };
  delete: { params: { channel: string; key: string } & WireAck; result: WriteResult };
  add: { params: { name: string; by: number; scope?: Scope } & WireAck; result: AddResult };
  counter: { params: { name: string }; result: number };
  transact: { params: { ops: Op[] } & WireAck; result: WriteResult };
  leader: { params: Record<string, never>; result: Leadership };
  members: { params: Record<string, never>; result: Member[] };
  lead_acquire: { params: { timeout_ms?: number }; result: TermId };
  backpressure_wait: { params: { timeout_ms?: number }; result: BackpressureResult };
  lead_put: { params: { channel: string; key: string; value: Value; term?: number }; result: TermId };
  lead_delete: { params: { channel: string; key: string; term?: number }; result: TermId };
  lead_release: { params: Record<string, never>; result: { released: boolean } };
  leader_get: { params: { channel: string; key: string }; result: LeaderGetResult };
  leader_keys: { params: { channel: string }; result: string[] };
  stats: { params: Record<string, never>; result: Stats };
  explain: { params: Record<string, never>; result: Explanation };
  keyring_list: { params: Record<string, never>; result: KeyringInfo };
  keyring_install: { params: { key_file?: string; generate?: boolean }; result: KeyringInfo & { installed: string } };
  keyring_use: { params: { id: string }; result: KeyringInfo };
  keyring_remove: { params: { id: string }; result: KeyringInfo };
}

export type Method = keyof Methods;
export type Params<M extends Method> = Methods[M]['params'];
export type Result<M extends Method> = Methods[M]['result'];

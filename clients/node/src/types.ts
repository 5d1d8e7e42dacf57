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

export interface Member {
  peer: string;
  incarnation: number;
  live: boolean;
  eligible: boolean;
  silent_for_ms: number;
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

export interface Stats {
  mesh: Record<string, number>;
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

export interface Explanation {
  me: { peer: string; incarnation: number };
  leader: string | null;
  term: number | null;
  max_term: number | null;
  /** The leader of the newest term this window knows (with `max_term`). */
  max_term_leader: string | null;
  me_candidate: boolean;
  peers: Array<{
    peer: string;
    incarnation: number;
    counter: number;
    live: boolean;
    eligible: boolean;
    silent_for_ms: number;
    death: null | 'timeout' | 'link_closed' | 'left';
  }>;
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

// Arguments are checked here before anything is sent, with the rules the sidecar applies
// (docs/sidecar.md), so that a mistake is reported with the argument's name and never
// reaches the wire.

import { invalidArgument } from './errors';
import type { Limits, Method, Value } from './types';

export const DEFAULT_LIMITS: Limits = { max_message: 16 * 1024 * 1024, max_name: 256, max_depth: 32 };

type Kind = 'name' | 'value' | 'scope' | 'bool' | 'count' | 'i64' | 'ops' | 'json';
type Schema = Record<string, { kind: Kind; required?: true }>;

const req = <K extends Kind>(kind: K) => ({ kind, required: true as const });
const opt = <K extends Kind>(kind: K) => ({ kind });
const ack: Schema = { durable: opt('bool'), replicated: opt('count'), timeout_ms: opt('count') };

const SCHEMAS: Record<Method, Schema> = {
  initialize: { protocol: opt('count'), client: opt('json') },
  shutdown: {},
  get: { channel: req('name'), key: req('name') },
  keys: { channel: req('name') },
  channels: {},
  put: { channel: req('name'), key: req('name'), value: req('value'), scope: opt('scope'), ...ack },
  put_presence: { channel: req('name'), key: req('name'), value: req('value'), scope: opt('scope'), ...ack },
  delete: { channel: req('name'), key: req('name'), ...ack },
  add: { name: req('name'), by: req('i64'), scope: opt('scope'), ...ack },
  counter: { name: req('name') },
  transact: { ops: req('ops'), ...ack },
  leader: {},
  members: {},
  lead_acquire: { timeout_ms: opt('count') },
  backpressure_wait: { timeout_ms: opt('count') },
  lead_put: { channel: req('name'), key: req('name'), value: req('value'), term: opt('count') },
  lead_delete: { channel: req('name'), key: req('name'), term: opt('count') },
  lead_release: {},
  leader_get: { channel: req('name'), key: req('name') },
  leader_keys: { channel: req('name') },
  stats: {},
  explain: {},
  keyring_list: {},
  keyring_install: { key_file: opt('name'), generate: opt('bool') },
  keyring_use: { id: req('name') },
  keyring_remove: { id: req('name') },
};

const OP_SCHEMAS: Record<string, Schema> = {
  put: { op: req('json'), channel: req('name'), key: req('name'), value: req('value'), scope: opt('scope') },
  delete: { op: req('json'), channel: req('name'), key: req('name') },
  add: { op: req('json'), name: req('name'), by: req('i64'), scope: opt('scope') },
};

export const METHODS = Object.keys(SCHEMAS) as Method[];

export function isMethod(method: string): method is Method {
  return Object.prototype.hasOwnProperty.call(SCHEMAS, method);
}

/**
 * Checks `params` of `method` and returns them as they go on the wire (`Uint8Array` values as
 * `$bytes`). Throws a StatemeshError (INVALID_PARAMS) naming the first bad argument.
 */
/** How the methods of `Mesh` name the wire fields that come from their options. */
const OPTION_NAMES: Record<string, string> = {
  durable: 'options.durable',
  replicated: 'options.replicated',
  timeout_ms: 'options.timeoutMs',
  scope: 'options.scope',
};

/**
 * Checks `params` of `method` and returns them as they go on the wire (`Uint8Array` values as
 * `$bytes`). Throws a StatemeshError (INVALID_PARAMS) naming the first bad argument: as a
 * field of `params` (`raw`, for `Mesh.request`), else as the argument or option of the method.
 */
export function checkParams(method: Method, params: unknown, limits: Limits, raw = true): Record<string, unknown> {
  const name = raw ? (field: string) => `params.${field}` : (field: string) => OPTION_NAMES[field] ?? field;
  const wire = checkObject(SCHEMAS[method], params ?? {}, name, limits);
  if (wire['durable'] === true && wire['replicated'] !== undefined) {
    throw invalidArgument(name('durable'), 'durable and replicated cannot be combined: choose one');
  }
  if (method === 'put_presence' && wire['scope'] !== undefined && wire['scope'] !== 'presence') {
    throw invalidArgument(name('scope'), 'put_presence writes presence-scoped records only');
  }
  return wire;
}

function checkObject(
  schema: Schema,
  given: unknown,
  name: (field: string) => string,
  limits: Limits,
): Record<string, unknown> {
  if (!isPlainObject(given)) throw invalidArgument(name('').replace(/\.$/, '') || 'params', `expected an object, got ${describe(given)}`);
  const out: Record<string, unknown> = {};
  for (const [field, v] of Object.entries(given)) {
    const spec = schema[field];
    if (spec === undefined) {
      const known = Object.keys(schema).filter((k) => k !== 'op');
      throw invalidArgument(name(field), `unknown field (known: ${known.join(', ') || 'none'})`);
    }
    if (v === undefined) continue; // an absent option
    out[field] = checkField(spec.kind, v, name(field), limits);
  }
  for (const [field, spec] of Object.entries(schema)) {
    if (spec.required && out[field] === undefined) throw invalidArgument(name(field), 'missing');
  }
  return out;
}

function checkField(kind: Kind, v: unknown, where: string, limits: Limits): unknown {
  switch (kind) {
    case 'name':
      checkName(v, where, limits.max_name);
      return v;
    case 'value':
      return encodeValue(v, where, 1, limits.max_depth);
    case 'scope':
      if (v !== 'durable' && v !== 'presence') throw invalidArgument(where, `expected "durable" or "presence", got ${describe(v)}`);
      return v;
    case 'bool':
      if (typeof v !== 'boolean') throw invalidArgument(where, `expected a boolean, got ${describe(v)}`);
      return v;
    case 'count':
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
        throw invalidArgument(where, `expected a non-negative integer, got ${describe(v)}`);
      }
      return v;
    case 'i64':
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
        throw invalidArgument(where, `expected an integer (at most 2^53-1 in magnitude), got ${describe(v)}`);
      }
      return v;
    case 'ops': {
      if (!Array.isArray(v)) throw invalidArgument(where, `expected an array of ops, got ${describe(v)}`);
      return v.map((op: unknown, i) => {
        const at = `${where}[${i}]`;
        const kindOf = isPlainObject(op) ? op['op'] : undefined;
        const schema = typeof kindOf === 'string' ? OP_SCHEMAS[kindOf] : undefined;
        if (schema === undefined) throw invalidArgument(`${at}.op`, `expected "put", "delete" or "add", got ${describe(kindOf)}`);
        return checkObject(schema, op, (field) => `${at}.${field}`, limits);
      });
    }
    case 'json':
      JSON.stringify(v);
      return v;
  }
}

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const wellFormed = (s: string): boolean => !LONE_SURROGATE.test(s);

/** Channel names, keys and counter names: 1 to 256 bytes of UTF-8 without control characters. */
export function checkName(v: unknown, where: string, max = DEFAULT_LIMITS.max_name): asserts v is string {
  if (typeof v !== 'string') throw invalidArgument(where, `expected a string, got ${describe(v)}`);
  const bytes = Buffer.byteLength(v, 'utf8');
  if (bytes === 0 || bytes > max || CONTROL.test(v) || !wellFormed(v)) {
    throw invalidArgument(where, `invalid name ${JSON.stringify(v)}: names are 1 to ${max} bytes without control characters`);
  }
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Checks a value and returns its wire form (`Uint8Array` as `{"$bytes": base64}`). */
export function encodeValue(v: unknown, where: string, depth: number, maxDepth: number): unknown {
  switch (typeof v) {
    case 'boolean':
      return v;
    case 'string':
      if (!wellFormed(v)) throw invalidArgument(where, 'a string with a lone surrogate is not valid UTF-8');
      return v;
    case 'number':
      if (!Number.isFinite(v)) throw invalidArgument(where, `${v} is not a JSON number`);
      return v;
    case 'object': {
      if (v === null) return null;
      // Bytes are a scalar: they do not count as a level.
      if (v instanceof Uint8Array) {
        return { $bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') };
      }
      const array = Array.isArray(v);
      if (!array && !isPlainObject(v)) throw invalidArgument(where, `${describe(v)} is not a JSON value: convert it first`);
      const keys = Object.keys(v);
      if (!array && keys.length === 1 && keys[0] === '$bytes') {
        const b = (v as Record<string, unknown>)['$bytes'];
        if (typeof b !== 'string' || !BASE64.test(b)) {
          throw invalidArgument(where, '{"$bytes": ...} must hold padded standard base64 (or pass a Uint8Array)');
        }
        return { $bytes: b };
      }
      if (depth > maxDepth) throw invalidArgument(where, `values nest at most ${maxDepth} levels`);
      if (array) return v.map((x, i) => encodeValue(x, `${where}[${i}]`, depth + 1, maxDepth));
      const out: Record<string, unknown> = {};
      for (const k of keys) {
        if (!wellFormed(k)) throw invalidArgument(where, 'a key with a lone surrogate is not valid UTF-8');
        out[k] = encodeValue((v as Record<string, unknown>)[k], `${where}.${k}`, depth + 1, maxDepth);
      }
      return out;
    }
    default:
      throw invalidArgument(where, `${describe(v)} is not a JSON value`);
  }
}

/** The value as read back: `{"$bytes": base64}` objects become `Uint8Array`s. */
export function decodeValue(v: unknown): Value {
  if (v === null || typeof v !== 'object') return v as Value;
  if (Array.isArray(v)) return v.map(decodeValue);
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1 && keys[0] === '$bytes' && typeof o['$bytes'] === 'string') {
    const b = Buffer.from(o['$bytes'], 'base64');
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }
  const out: { [key: string]: Value } = {};
  for (const k of keys) out[k] = decodeValue(o[k]);
  return out;
}

/** Converts camelCase options to wire fields, refusing unknown ones. */
export function options(
  given: object | undefined,
  known: Record<string, string>,
  where: string,
): Record<string, unknown> {
  if (given === undefined) return {};
  if (!isPlainObject(given)) throw invalidArgument(where, `expected an options object, got ${describe(given)}`);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(given)) {
    const wire = known[k];
    if (wire === undefined) {
      throw invalidArgument(`${where}.${k}`, `unknown option (known: ${Object.keys(known).join(', ')})`);
    }
    if (v !== undefined) out[wire] = v;
  }
  return out;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') {
    const name = (v as object).constructor?.name;
    return name && name !== 'Object' ? `a ${name}` : 'an object';
  }
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return `${typeof v} ${String(v)}`;
  return typeof v;
}

'use strict';
// A dependency-free Node.js client for `statemesh sidecar` (protocol 1, docs/sidecar.md).
//
//   const { Sidecar } = require('./statemesh');
//   const mesh = await Sidecar.spawn({ mesh: 'my-workspace' });
//   mesh.on('change', (c) => console.log(c.channel, c.key, c.kind, c.by));
//   mesh.on('leadership', (l) => console.log('leader', l.leader, l.term, l.is_me));
//   await mesh.put('windows', 'w1', { title: 'hello' }, { durable: true });
//   console.log(await mesh.get('windows', 'w1')); // { found: true, value: { title: 'hello' } }
//   await mesh.shutdown();
//
// Works with Node.js 12 and later. Errors from the sidecar reject with a StatemeshError whose
// `code` is the JSON-RPC error code (see `codes`) and whose `message` is statemesh's own text.

const { spawn } = require('child_process');
const { EventEmitter } = require('events');

const PROTOCOL_VERSION = 1;
const DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024;
const HEADER_END = Buffer.from('\r\n\r\n');

/** Error codes of the protocol (docs/sidecar.md), plus the client's own string codes. */
const codes = Object.freeze({
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  NOT_LEADER: -32001,
  NOT_INITIALIZED: -32002,
  MESH_CLOSED: -32003,
  TIMEOUT: -32004,
  WRITE_REFUSED: -32005,
  READ_FAILED: -32006,
  JOIN_FAILED: -32007,
  UNSUPPORTED_PROTOCOL: -32008,
  FRAMING_ERROR: -32020,
  MESSAGE_TOO_LARGE: -32021,
  // Client-side: the sidecar process exited before answering.
  SIDECAR_EXITED: 'SIDECAR_EXITED',
  // Client-side: the request is larger than the sidecar accepts; it was not sent.
  TOO_LARGE: 'TOO_LARGE',
});

class StatemeshError extends Error {
  constructor(code, message, data) {
    super(message);
    this.name = 'StatemeshError';
    this.code = code;
    this.data = data;
  }
}

/** Frames one JSON value: `Content-Length: N\r\n\r\n` + N bytes of UTF-8. */
function encode(value) {
  const body = Buffer.from(JSON.stringify(value), 'utf8');
  return Buffer.concat([Buffer.from('Content-Length: ' + body.length + '\r\n\r\n', 'ascii'), body]);
}

/** Incremental decoder of framed messages (chunks in, parsed JSON values out). */
class FrameReader {
  constructor(maxBody) {
    this.maxBody = maxBody || DEFAULT_MAX_MESSAGE;
    this.buf = Buffer.alloc(0);
    this.need = -1; // body length being read, or -1 while reading headers
  }

  push(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out = [];
    for (;;) {
      if (this.need < 0) {
        const end = this.buf.indexOf(HEADER_END);
        if (end < 0) {
          if (this.buf.length > 8192) throw new Error('statemesh: header block too long');
          return out;
        }
        const headers = this.buf.slice(0, end).toString('ascii').split('\r\n');
        this.buf = this.buf.slice(end + HEADER_END.length);
        let length = -1;
        for (const line of headers) {
          const m = /^content-length:\s*(\d+)\s*$/i.exec(line);
          if (m) length = Number(m[1]);
        }
        if (length < 0 || length > this.maxBody) {
          throw new Error('statemesh: bad Content-Length from the sidecar');
        }
        this.need = length;
      }
      if (this.buf.length < this.need) return out;
      const body = this.buf.slice(0, this.need);
      this.buf = this.buf.slice(this.need);
      this.need = -1;
      out.push(JSON.parse(body.toString('utf8')));
    }
  }
}

/** Turns spawn options into `statemesh sidecar` flags. */
function sidecarArgs(o) {
  const args = ['sidecar'];
  const flag = (name, value) => {
    if (value !== undefined && value !== null) args.push('--' + name, String(value));
  };
  flag('mesh', o.mesh);
  flag('secret-file', o.secretFile);
  flag('runtime-dir', o.runtimeDir);
  flag('state-dir', o.stateDir);
  flag('listen', o.listen);
  flag('heartbeat-ms', o.heartbeatMs);
  flag('suspect-ms', o.suspectMs);
  flag('max-message', o.maxMessage);
  flag('ack-timeout-ms', o.ackTimeoutMs);
  if (o.noPersist) args.push('--no-persist');
  if (o.notEligible) args.push('--not-eligible');
  for (const p of o.peers || []) flag('peer', p);
  return args.concat(o.extraArgs || []);
}

/**
 * One sidecar process: one peer of the mesh.
 *
 * Events: 'change' ({channel, key, kind, by}), 'leadership' ({leader, term, is_me}),
 * 'lead_lost' ({term, term_leader}), 'lagged' ({missed}), 'protocol_error' (an error answer with a null id),
 * 'exit' (code, signal), 'error' (the process could not be spawned or its output was garbled).
 */
class Sidecar extends EventEmitter {
  /**
   * Spawns `statemesh sidecar` and initializes it. Options: bin (default $STATEMESH_BIN or
   * 'statemesh'), mesh, secretFile, runtimeDir, stateDir, noPersist, notEligible, listen, peers,
   * heartbeatMs, suspectMs, maxMessage, ackTimeoutMs, extraArgs, env, stderr ('inherit' |
   * 'pipe' | 'ignore', default 'inherit'), client (a name for the sidecar's logs).
   * Resolves once `initialize` is answered: `peer`, `leadership` and `limits` are then set.
   */
  static async spawn(options) {
    const o = options || {};
    const bin = o.bin || process.env.STATEMESH_BIN || 'statemesh';
    const child = spawn(bin, sidecarArgs(o), {
      stdio: ['pipe', 'pipe', o.stderr || 'inherit'],
      env: o.env || process.env,
    });
    const sidecar = new Sidecar(child, o.maxMessage || DEFAULT_MAX_MESSAGE);
    await sidecar.initialize(o.client);
    return sidecar;
  }

  constructor(child, maxMessage) {
    super();
    this.child = child;
    this.pid = child.pid;
    this.maxMessage = maxMessage;
    this.nextId = 1;
    this.pending = new Map();
    this.exited = null;
    this.leadership = { leader: null, term: null, is_me: false };
    this.exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        this.failAll(new StatemeshError(codes.SIDECAR_EXITED,
          'the sidecar exited (code ' + code + ', signal ' + signal + ')'));
        this.emit('exit', code, signal);
        resolve(this.exited);
      });
    });
    child.on('error', (e) => {
      // Spawning failed (e.g. ENOENT): no 'exit' follows.
      this.exited = this.exited || { code: null, signal: null, error: e };
      this.failAll(new StatemeshError(codes.SIDECAR_EXITED, 'could not run the sidecar: ' + e.message));
      if (this.listenerCount('error') > 0) this.emit('error', e);
    });
    // Writing to a sidecar that just died must not crash the window.
    child.stdin.on('error', () => {});
    const reader = new FrameReader(maxMessage);
    child.stdout.on('data', (chunk) => {
      let messages;
      try {
        messages = reader.push(chunk);
      } catch (e) {
        if (this.listenerCount('error') > 0) this.emit('error', e);
        child.kill('SIGTERM');
        return;
      }
      for (const m of messages) this.dispatch(m);
    });
  }

  dispatch(m) {
    if (m.method !== undefined) {
      if (m.method === 'leadership') this.leadership = m.params;
      // Emitted on a later turn of the event loop, in order: code that awaits spawn() and then
      // adds its listeners sees every notification sent after the `initialize` answer.
      setImmediate(() => this.emit(m.method, m.params));
      return;
    }
    const p = m.id === null || m.id === undefined ? undefined : this.pending.get(m.id);
    if (p === undefined) {
      if (m.error) this.emit('protocol_error', m.error);
      return;
    }
    this.pending.delete(m.id);
    if (p.timer) clearTimeout(p.timer);
    if (m.error) p.reject(new StatemeshError(m.error.code, m.error.message, m.error.data));
    else p.resolve(m.result);
  }

  failAll(error) {
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(error);
    }
    this.pending.clear();
  }

  /**
   * Sends a request; resolves with its result, rejects with a StatemeshError. `timeoutMs`
   * (optional) rejects locally if no answer comes in time (the request may still take effect).
   */
  request(method, params, timeoutMs) {
    if (this.exited) {
      return Promise.reject(new StatemeshError(codes.SIDECAR_EXITED, 'the sidecar has exited'));
    }
    const id = this.nextId++;
    const frame = encode({ jsonrpc: '2.0', id, method, params: params || {} });
    if (frame.length > this.maxMessage + 64) {
      return Promise.reject(new StatemeshError(codes.TOO_LARGE,
        'request of ' + frame.length + ' bytes exceeds the limit of ' + this.maxMessage));
    }
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, timer: null };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new StatemeshError(codes.TIMEOUT, method + ': no answer within ' + timeoutMs + ' ms'));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      this.child.stdin.write(frame);
    });
  }

  /** Sends a notification (no answer; errors are only logged by the sidecar). */
  notify(method, params) {
    if (!this.exited) this.child.stdin.write(encode({ jsonrpc: '2.0', method, params: params || {} }));
  }

  async initialize(client) {
    const r = await this.request('initialize', {
      protocol: PROTOCOL_VERSION,
      client: { name: client || 'statemesh.js' },
    });
    this.peer = r.peer;
    this.mesh = r.mesh;
    this.leadership = r.leadership;
    this.limits = r.limits;
    return r;
  }

  // ---- reads ----
  get(channel, key) { return this.request('get', { channel, key }); }
  keys(channel) { return this.request('keys', { channel }); }
  channels() { return this.request('channels'); }
  counter(name) { return this.request('counter', { name }); }
  leaderGet(channel, key) { return this.request('leader_get', { channel, key }); }
  leaderKeys(channel) { return this.request('leader_keys', { channel }); }
  members() { return this.request('members'); }
  leader() { return this.request('leader'); }
  stats() { return this.request('stats'); }
  explain() { return this.request('explain'); }

  // ---- writes; opts: { durable: true } or { replicated: k }, timeout_ms, scope ----
  put(channel, key, value, opts) {
    return this.request('put', Object.assign({ channel, key, value }, opts));
  }
  putPresence(channel, key, value, opts) {
    return this.request('put_presence', Object.assign({ channel, key, value }, opts));
  }
  delete(channel, key, opts) {
    return this.request('delete', Object.assign({ channel, key }, opts));
  }
  add(name, by, opts) {
    return this.request('add', Object.assign({ name, by }, opts));
  }
  /** ops: [{op: 'put', channel, key, value, scope?}, {op: 'delete', channel, key}, {op: 'add', name, by, scope?}] */
  transact(ops, opts) {
    return this.request('transact', Object.assign({ ops }, opts));
  }

  // ---- leadership ----
  /** Resolves with {term} once this window leads (opts.timeout_ms to give up). */
  leadAcquire(opts) { return this.request('lead_acquire', opts || {}); }
  leadPut(channel, key, value, term) {
    const p = { channel, key, value };
    if (term !== undefined) p.term = term;
    return this.request('lead_put', p);
  }
  leadDelete(channel, key, term) {
    const p = { channel, key };
    if (term !== undefined) p.term = term;
    return this.request('lead_delete', p);
  }
  leadRelease() { return this.request('lead_release'); }

  // ---- lifecycle ----
  /** Leaves the mesh gracefully (the next leader takes over at once); resolves on exit. */
  async shutdown() {
    if (this.exited) return this.exited;
    try {
      await this.request('shutdown');
    } catch (e) {
      if (e.code !== codes.SIDECAR_EXITED) throw e;
    }
    this.child.stdin.end();
    return this.exitPromise;
  }

  /** Kills the sidecar process (default SIGKILL: no graceful leave). Resolves on exit. */
  kill(signal) {
    if (!this.exited) this.child.kill(signal || 'SIGKILL');
    return this.exitPromise;
  }
}

module.exports = { Sidecar, StatemeshError, FrameReader, encode, codes, PROTOCOL_VERSION };

// @ts-check
// Bad arguments are refused before they reach the wire; the sidecar's own refusals arrive
// intact; values round-trip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, StatemeshError } from 'statemesh';
import { freshMesh } from './helpers.mjs';

/** @param {number} levels */
function nested(levels) {
  /** @type {any} */
  let v = 1;
  for (let i = 0; i < levels; i++) v = [v];
  return v;
}

test('bad arguments are refused before they reach the wire', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join({ maxMessage: 4096 });
  const before = (await mesh.stats()).sidecar.messages_in;

  /** @type {Array<[string, () => Promise<unknown>, RegExp]>} */
  const cases = [
    ['empty channel', () => mesh.put('', 'k', 1), /^channel: invalid name ""/],
    ['control character', () => mesh.get('c', 'a\nb'), /^key: invalid name/],
    ['name too long', () => mesh.counter('x'.repeat(257)), /^name: invalid name/],
    // @ts-expect-error: not a string
    ['number as channel', () => mesh.keys(3), /^channel: expected a string, got number 3/],
    // @ts-expect-error: undefined is not a value
    ['undefined value', () => mesh.put('c', 'k', undefined), /^value: missing/],
    ['NaN', () => mesh.put('c', 'k', { a: [NaN] }), /^value\.a\[0\]: NaN is not a JSON number/],
    // @ts-expect-error: a Date is not a value
    ['a Date', () => mesh.put('c', 'k', new Date()), /^value: a Date is not a JSON value/],
    // @ts-expect-error: a bigint is not a value
    ['a bigint', () => mesh.put('c', 'k', 1n), /^value: bigint 1 is not a JSON value/],
    ['too deep', () => mesh.put('c', 'k', nested(33)), /values nest at most 32 levels/],
    ['bad $bytes', () => mesh.put('c', 'k', { $bytes: 'abc' }), /base64/],
    ['lone surrogate', () => mesh.put('c', 'k', '\ud800'), /lone surrogate/],
    // @ts-expect-error: a misspelt option
    ['misspelt option', () => mesh.put('c', 'k', 1, { durabel: true }), /^options\.durabel: unknown option/],
    ['durable and replicated', () => mesh.put('c', 'k', 1, { durable: true, replicated: 1 }), /cannot be combined/],
    ['negative replicated', () => mesh.delete('c', 'k', { replicated: -1 }), /^options\.replicated: expected a non-negative integer/],
    // @ts-expect-error: a wrong scope
    ['bad scope', () => mesh.add('n', 1, { scope: 'forever' }), /^options\.scope: expected "durable" or "presence"/],
    ['fractional addition', () => mesh.add('n', 1.5), /^by: expected an integer/],
    ['addition beyond 2^53', () => mesh.add('n', 2 ** 60), /^by: expected an integer/],
    // @ts-expect-error: an unknown op
    ['unknown op', () => mesh.transact([{ op: 'nope' }]), /^ops\[0\]\.op: expected "put", "delete" or "add"/],
    // @ts-expect-error: a field of another op
    ['field of another op', () => mesh.transact([{ op: 'delete', channel: 'c', key: 'k', value: 1 }]), /^ops\[0\]\.value: unknown field/],
    ['negative lead timeout', () => mesh.lead({ timeoutMs: -1 }), /^options\.timeoutMs: expected a non-negative integer/],
    // @ts-expect-error: a missing param of a raw request
    ['missing raw param', () => mesh.request('get', { channel: 'c' }), /^params\.key: missing/],
    // @ts-expect-error: an unknown param of a raw request
    ['unknown raw param', () => mesh.request('keys', { channel: 'c', prefix: 'a' }), /^params\.prefix: unknown field/],
    // @ts-expect-error: an unknown method
    ['unknown method', () => mesh.request('nope', {}), /^method: unknown method "nope"/],
    // @ts-expect-error: not a signal
    ['not a signal', () => mesh.lead({ signal: 'stop' }), /^options\.signal: expected an AbortSignal/],
  ];
  for (const [what, call, message] of cases) {
    await assert.rejects(call(), (e) => {
      assert.ok(e instanceof StatemeshError, `${what}: ${e}`);
      assert.equal(e.code, ErrorCode.INVALID_PARAMS, what);
      assert.match(e.message, message, what);
      return true;
    });
  }
  // Larger than the sidecar accepts (--max-message 4096): not sent either.
  await assert.rejects(mesh.put('c', 'k', 'x'.repeat(5000)), (e) => {
    assert.ok(e instanceof StatemeshError);
    assert.equal(e.code, ErrorCode.MESSAGE_TOO_LARGE);
    assert.equal(/** @type {any} */ (e.data).max, 4096);
    return true;
  });
  // The sidecar received one message since: the second stats request.
  const after = await mesh.stats();
  assert.equal(after.sidecar.messages_in, before + 1, 'nothing else reached the wire');
  assert.equal(after.sidecar.errors_out, 0);
});

test("the sidecar's own refusals arrive with their code, message and data", async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join();
  await assert.rejects(mesh.request('lead_delete', { channel: 'p', key: 'k', term: 7 }), (e) => {
    assert.ok(e instanceof StatemeshError);
    assert.equal(e.name, 'StatemeshError');
    assert.equal(e.code, ErrorCode.NOT_LEADER);
    assert.equal(e.message, 'no lead guard is held: call lead_acquire first');
    return true;
  });
  assert.equal((await mesh.stats()).sidecar.errors_out, 1);
});

test('values round-trip: nesting to the limit, bytes, floats, unicode', async (t) => {
  const m = await freshMesh(t);
  const mesh = await m.join();
  const value = {
    deep: nested(31),
    bytes: new Uint8Array([0, 1, 2, 250]),
    notBytes: { $bytes: 'AQID', other: 1 },
    float: 0.1 + 0.2,
    big: Number.MAX_SAFE_INTEGER,
    negative: -42,
    text: 'déjà vu 🦀',
    empty: {},
    list: [null, true, false, ''],
  };
  assert.deepEqual(await mesh.put('values', 'v', value), { changed: true });
  assert.deepEqual(await mesh.get('values', 'v'), { found: true, value });
  assert.deepEqual(await mesh.put('values', 'v', value), { changed: false }, 'an equal write is no change');
  assert.deepEqual(await mesh.get('values', 'raw'), { found: false, value: null });
  await mesh.put('values', 'raw', { $bytes: 'AQID' });
  assert.deepEqual(await mesh.get('values', 'raw'), { found: true, value: new Uint8Array([1, 2, 3]) });
});

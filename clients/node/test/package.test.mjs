// @ts-check
// The package itself: one set of classes behind both entry points, and the binary search.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as esm from 'statemesh';

const require = createRequire(import.meta.url);

test('import and require give the same exports, the same classes', () => {
  /** @type {Record<string, unknown>} */
  const cjs = require('statemesh');
  /** @type {Record<string, unknown>} */
  const named = { ...esm };
  assert.deepEqual(Object.keys(esm).sort(), Object.keys(cjs).sort());
  for (const name of Object.keys(cjs)) assert.equal(named[name], cjs[name], name);
  /** @type {{ name: string, dependencies?: object }} */
  const pkg = require('statemesh/package.json');
  assert.equal(pkg.name, 'statemesh');
  assert.deepEqual(pkg.dependencies ?? {}, {}, 'no runtime dependencies');
});

test('errors carry a stable code and data, and are Errors', () => {
  const e = new esm.StatemeshError(esm.ErrorCode.TIMEOUT, 'late', { applied: true });
  assert.ok(e instanceof Error);
  assert.equal(e.name, 'StatemeshError');
  assert.equal(e.code, -32004);
  assert.deepEqual(e.data, { applied: true });
  assert.match(String(e.stack), /StatemeshError: late/);
});

test('the binary: the bin option, then $STATEMESH_BIN, then the packaged one, then $PATH', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'statemesh-bin-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const exe = async (/** @type {string} */ file) => {
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, '#!/bin/sh\n');
    await chmod(file, 0o755);
    return file;
  };
  const onPath = await exe(path.join(dir, 'path', 'statemesh'));
  const fromEnv = await exe(path.join(dir, 'env', 'statemesh'));
  const option = await exe(path.join(dir, 'option', 'statemesh'));
  const plain = path.join(dir, 'plain');
  await writeFile(plain, 'not executable');
  const PATH = path.join(dir, 'path');
  const root = path.join(dir, 'package');

  assert.deepEqual(esm.findBinary(undefined, { PATH }, root), { path: onPath, from: 'path' });
  assert.deepEqual(esm.findBinary(undefined, { PATH, STATEMESH_BIN: fromEnv }), { path: fromEnv, from: 'env' });
  assert.deepEqual(esm.findBinary(option, { PATH, STATEMESH_BIN: fromEnv }), { path: option, from: 'option' });
  // A named binary that cannot run is an error, not a reason to look elsewhere.
  assert.throws(() => esm.findBinary(undefined, { PATH, STATEMESH_BIN: plain }), {
    code: esm.ErrorCode.BINARY_NOT_FOUND,
    message: /\$STATEMESH_BIN names .*plain, which is not an executable file/,
  });
  assert.throws(() => esm.findBinary(undefined, { PATH: path.join(dir, 'nowhere') }, root), {
    code: esm.ErrorCode.BINARY_NOT_FOUND,
    message: /set \$STATEMESH_BIN, ship one at .*bin.*statemesh, or put statemesh on \$PATH/,
  });
  // The binary shipped beside the package comes before $PATH.
  const packaged = await exe(esm.packagedBinaryPath(root));
  assert.deepEqual(esm.findBinary(undefined, { PATH }, root), { path: packaged, from: 'package' });
  assert.deepEqual(esm.findBinary(undefined, { PATH, STATEMESH_BIN: fromEnv }, root), { path: fromEnv, from: 'env' });
  assert.equal(
    esm.packagedBinaryPath('/pkg'),
    path.join('/pkg', 'bin', `${process.platform}-${process.arch}`, process.platform === 'win32' ? 'statemesh.exe' : 'statemesh'),
  );
});

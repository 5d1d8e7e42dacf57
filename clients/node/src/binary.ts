import * as fs from 'node:fs';
import * as path from 'node:path';
import { ErrorCode, StatemeshError } from './errors';

/** Where `findBinary` found the `statemesh` binary. */
export interface FoundBinary {
  path: string;
  /** `option`: the `bin` option; `env`: $STATEMESH_BIN; `package`: shipped beside the package; `path`: $PATH. */
  from: 'option' | 'env' | 'package' | 'path';
}

const EXE = process.platform === 'win32' ? 'statemesh.exe' : 'statemesh';

/** The directory of this package (dist/cjs/ is two levels below it). */
export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

/** The binary this package would ship for this platform: `bin/<platform>-<arch>/statemesh`. */
export function packagedBinaryPath(root: string = PACKAGE_ROOT): string {
  return path.join(root, 'bin', `${process.platform}-${process.arch}`, EXE);
}

function runnable(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, process.platform === 'win32' ? fs.constants.F_OK : fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Finds the `statemesh` binary: the `bin` option, else $STATEMESH_BIN, else the one shipped
 * beside the package (`bin/<platform>-<arch>/statemesh`), else `statemesh` on $PATH. A `bin`
 * or $STATEMESH_BIN that is not runnable is an error, never silently skipped.
 */
export function findBinary(bin?: string, env: NodeJS.ProcessEnv = process.env, root = PACKAGE_ROOT): FoundBinary {
  if (bin !== undefined) {
    if (!runnable(bin)) throw notRunnable(bin, 'the bin option');
    return { path: bin, from: 'option' };
  }
  const fromEnv = env['STATEMESH_BIN'];
  if (fromEnv) {
    if (!runnable(fromEnv)) throw notRunnable(fromEnv, '$STATEMESH_BIN');
    return { path: fromEnv, from: 'env' };
  }
  const packaged = packagedBinaryPath(root);
  if (runnable(packaged)) return { path: packaged, from: 'package' };
  const dirs = (env['PATH'] ?? env['Path'] ?? '').split(path.delimiter).filter((d) => d !== '');
  for (const dir of dirs) {
    const candidate = path.join(dir, EXE);
    if (runnable(candidate)) return { path: candidate, from: 'path' };
  }
  throw new StatemeshError(
    ErrorCode.BINARY_NOT_FOUND,
    `no statemesh binary: set $STATEMESH_BIN, ship one at ${packaged}, or put ${EXE} on $PATH`,
    { packaged },
  );
}

function notRunnable(file: string, what: string): StatemeshError {
  return new StatemeshError(ErrorCode.BINARY_NOT_FOUND, `${what} names ${file}, which is not an executable file`, {
    path: file,
  });
}

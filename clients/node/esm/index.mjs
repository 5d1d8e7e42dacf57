// The ES module entry point: the CommonJS build re-exported, so that `import` and `require`
// share one set of classes (a Mesh from one is a Mesh to the other).
import cjs from '../dist/cjs/index.js';

export const {
  Mesh,
  LeadGuard,
  PROTOCOL_VERSION,
  StatemeshError,
  ErrorCode,
  findBinary,
  packagedBinaryPath,
} = cjs;

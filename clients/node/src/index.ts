// statemesh for Node.js: one shared state and one probe leader for every window of an app.
// The package supervises a `statemesh sidecar` child process and speaks its protocol
// (docs/sidecar.md in the statemesh repository).

export { Mesh, PROTOCOL_VERSION } from './mesh';
export type { MeshEvents } from './mesh';
export { LeadGuard } from './guard';
export type {
  JoinOptions,
  LeadOptions,
  PutOptions,
  RestartOptions,
  SubscribeOptions,
  WaitOptions,
  WriteOptions,
} from './options';
export type { SidecarExit } from './session';
export { StatemeshError, ErrorCode } from './errors';
export { findBinary, packagedBinaryPath } from './binary';
export type { FoundBinary } from './binary';
export type * from './types';

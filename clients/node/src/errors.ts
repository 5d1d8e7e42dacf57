/**
 * Error codes. The numbers are the sidecar protocol's stable JSON-RPC codes (docs/sidecar.md,
 * "Errors"); the strings are this package's own, for what happens on this side of the pipe.
 */
export const ErrorCode = {
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  /** Also used for arguments this package refuses before sending them (`data.argument`). */
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  NOT_LEADER: -32001,
  NOT_INITIALIZED: -32002,
  /** The mesh is shut down: also for calls made after `close()`. */
  MESH_CLOSED: -32003,
  TIMEOUT: -32004,
  WRITE_REFUSED: -32005,
  READ_FAILED: -32006,
  JOIN_FAILED: -32007,
  UNSUPPORTED_PROTOCOL: -32008,
  /** A `keyring_*` change was refused (the last key, the primary, a key not installed...). */
  KEYRING_REFUSED: -32010,
  /** A write refused, nothing written: the window is too far ahead of its peers (`data.backlog`, `data.limit`). Await `mesh.waitBackpressure()`, then retry. */
  BUSY: -32011,
  FRAMING_ERROR: -32020,
  /** Also used for requests this package does not send because they exceed the limit. */
  MESSAGE_TOO_LARGE: -32021,
  /** The sidecar process exited (or is being restarted): the call was not answered. */
  SIDECAR_EXITED: 'SIDECAR_EXITED',
  /** The sidecar could not be started (binary missing or not executable). */
  SPAWN_FAILED: 'SPAWN_FAILED',
  /** No `statemesh` binary was found. */
  BINARY_NOT_FOUND: 'BINARY_NOT_FOUND',
  /** The caller's `AbortSignal` aborted the wait. */
  ABORTED: 'ABORTED',
  /** No answer within the `requestTimeoutMs` given to `Mesh.join` (the request may still take effect). */
  REQUEST_TIMEOUT: 'REQUEST_TIMEOUT',
  /** The sidecar wrote something that is not a valid framed JSON-RPC message. */
  PROTOCOL_VIOLATION: 'PROTOCOL_VIOLATION',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Every error this package rejects with: `code` is stable, `message` is for humans. */
export class StatemeshError extends Error {
  override readonly name = 'StatemeshError';
  readonly code: ErrorCode | number;
  readonly data: unknown;

  constructor(code: ErrorCode | number, message: string, data?: unknown, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.data = data;
  }
}

export function invalidArgument(argument: string, message: string): StatemeshError {
  return new StatemeshError(ErrorCode.INVALID_PARAMS, `${argument}: ${message}`, { argument });
}

export function leadershipLost(term: number): StatemeshError {
  return new StatemeshError(ErrorCode.NOT_LEADER, `the leadership of term ${term} was lost`, { term });
}

export function aborted(signal: AbortSignal): StatemeshError {
  return new StatemeshError(ErrorCode.ABORTED, 'the wait was aborted', undefined, { cause: signal.reason });
}

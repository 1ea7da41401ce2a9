/**
 * One error type for the whole project. Each code maps to a CLI exit code, a FUSE errno and a gRPC status,
 * so that every layer reports a failure the same way. Messages say what failed and what to do about it.
 */
export const ErrorCodes = {
  INVALID_ARGUMENT: { exit: 2, errno: 'EINVAL', grpc: 3 },
  INVALID_REFERENCE: { exit: 2, errno: 'EINVAL', grpc: 3 },
  CONFIG: { exit: 2, errno: 'EINVAL', grpc: 3 },
  NOT_FOUND: { exit: 3, errno: 'ENOENT', grpc: 5 },
  ALREADY_EXISTS: { exit: 1, errno: 'EEXIST', grpc: 6 },
  FAILED_PRECONDITION: { exit: 1, errno: 'EINVAL', grpc: 9 },
  UNAUTHORIZED: { exit: 4, errno: 'EACCES', grpc: 16 },
  FORBIDDEN: { exit: 4, errno: 'EACCES', grpc: 7 },
  UNSUPPORTED: { exit: 5, errno: 'ENOTSUP', grpc: 12 },
  CORRUPT: { exit: 6, errno: 'EIO', grpc: 15 },
  DIGEST_MISMATCH: { exit: 6, errno: 'EIO', grpc: 15 },
  REGISTRY: { exit: 7, errno: 'EIO', grpc: 14 },
  NETWORK: { exit: 7, errno: 'EIO', grpc: 14 },
  TIMEOUT: { exit: 8, errno: 'ETIMEDOUT', grpc: 4 },
  ABORTED: { exit: 130, errno: 'EINTR', grpc: 1 },
  NO_SPACE: { exit: 9, errno: 'ENOSPC', grpc: 8 },
  IO: { exit: 10, errno: 'EIO', grpc: 13 },
  VERIFY_FAILED: { exit: 11, errno: 'EIO', grpc: 13 },
  INTERNAL: { exit: 70, errno: 'EIO', grpc: 13 },
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export interface DfErrorOptions {
  cause?: unknown;
  /** Extra machine-readable details (digest, url, status, ...). */
  details?: Record<string, unknown>;
}

export class DfError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: DfErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'DfError';
    this.code = code;
    this.details = opts.details ?? {};
  }

  get exitCode(): number {
    return ErrorCodes[this.code].exit;
  }

  get errno(): string {
    return ErrorCodes[this.code].errno;
  }

  get grpcStatus(): number {
    return ErrorCodes[this.code].grpc;
  }

  /**
   * An expected answer carried as an error, not a fault (a source's "busy" or "deferred"): made without a
   * stack trace, which costs more than the rest of such an answer and says nothing (a seed at N = 16 made
   * thousands a minute).
   */
  static answer(code: ErrorCode, message: string, opts?: DfErrorOptions): DfError {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return new DfError(code, message, opts);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }

  static invalidArgument(message: string, opts?: DfErrorOptions): DfError {
    return new DfError('INVALID_ARGUMENT', message, opts);
  }
  static notFound(message: string, opts?: DfErrorOptions): DfError {
    return new DfError('NOT_FOUND', message, opts);
  }
  static corrupt(message: string, opts?: DfErrorOptions): DfError {
    return new DfError('CORRUPT', message, opts);
  }
  static digestMismatch(what: string, expected: string, actual: string): DfError {
    return new DfError('DIGEST_MISMATCH', `${what}: digest mismatch (expected ${expected}, got ${actual})`, {
      details: { expected, actual },
    });
  }
  static unsupported(message: string, opts?: DfErrorOptions): DfError {
    return new DfError('UNSUPPORTED', message, opts);
  }
  static timeout(message: string, opts?: DfErrorOptions): DfError {
    return new DfError('TIMEOUT', message, opts);
  }
  static aborted(message = 'operation aborted', opts?: DfErrorOptions): DfError {
    return new DfError('ABORTED', message, opts);
  }
  static internal(message: string, opts?: DfErrorOptions): DfError {
    return new DfError('INTERNAL', message, opts);
  }

  /** Wraps anything thrown into a DfError, mapping well-known Node errors (ENOSPC, ENOENT, aborts). */
  static from(err: unknown, context?: string): DfError {
    if (err instanceof DfError) return err;
    const prefix = context ? `${context}: ` : '';
    const e = err as NodeJS.ErrnoException | undefined;
    const msg = e && typeof e.message === 'string' ? e.message : String(err);
    if (e && typeof e === 'object') {
      if (e.name === 'AbortError') return new DfError('ABORTED', `${prefix}aborted`, { cause: err });
      if (e.name === 'TimeoutError') return new DfError('TIMEOUT', `${prefix}timed out`, { cause: err });
      switch (e.code) {
        case 'ENOSPC':
        case 'EDQUOT':
          return new DfError(
            'NO_SPACE',
            `${prefix}no space left on device; free disk space or lower the cache size`,
            {
              cause: err,
            },
          );
        case 'ENOENT':
          return new DfError('NOT_FOUND', `${prefix}${msg}`, { cause: err });
        case 'EACCES':
        case 'EPERM':
          return new DfError('FORBIDDEN', `${prefix}${msg}`, { cause: err });
        case 'ECONNREFUSED':
        case 'ECONNRESET':
        case 'EHOSTUNREACH':
        case 'ENETUNREACH':
        case 'ENOTFOUND':
        case 'EAI_AGAIN':
        case 'UND_ERR_SOCKET':
        case 'UND_ERR_CLOSED':
          return new DfError('NETWORK', `${prefix}${msg}`, { cause: err });
        case 'UND_ERR_CONNECT_TIMEOUT':
        case 'UND_ERR_HEADERS_TIMEOUT':
        case 'UND_ERR_BODY_TIMEOUT':
        case 'ETIMEDOUT':
          return new DfError('TIMEOUT', `${prefix}${msg}`, { cause: err });
        case 'Z_DATA_ERROR':
        case 'Z_BUF_ERROR':
          return new DfError('CORRUPT', `${prefix}corrupt compressed data: ${msg}`, { cause: err });
      }
    }
    return new DfError('INTERNAL', `${prefix}${msg}`, { cause: err });
  }
}

export function isDfError(err: unknown, code?: ErrorCode): err is DfError {
  return err instanceof DfError && (code === undefined || err.code === code);
}

import { pino, type Logger } from 'pino';

export type { Logger };

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

/**
 * Structured logs (JSON lines) on stderr, so stdout stays free for command output such as `--json`.
 * Components receive a child logger through their constructor; nothing logs per block on the hot path.
 */
export function createLogger(level: LogLevel = (process.env.DFNODE_LOG_LEVEL as LogLevel) || 'info'): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything: the default for library code and tests. */
export const silentLogger: Logger = pino({ level: 'silent' });

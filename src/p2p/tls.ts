import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import { DfError } from '../errors.js';
import { ClosedBeforeAnswer } from '../util/http-answer.js';

/** p2p.tls of the config: PEM file paths, all empty (TLS off) or all set. */
export interface TlsPaths {
  cert: string;
  key: string;
  ca: string;
}

/** Mutual TLS material of this host: its certificate (chain) and key, and the cluster CA bundle. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

const HINT =
  'every node and seed needs p2p.tls set, with a certificate and key signed by the one cluster CA in p2p.tls.ca';

/**
 * Reads and checks p2p.tls: undefined when it is off (all three paths empty). Fails with a CONFIG error when
 * only some are set, a file is unreadable or not PEM, the key does not belong to the certificate, or the
 * certificate is not signed (directly or through the intermediates in its file) by a CA of the bundle,
 * so that a misconfigured host stops at start instead of being refused by every peer later.
 * The files are read once: restart after the certificates are renewed.
 */
export function loadTls(paths: TlsPaths): TlsMaterial | undefined {
  const set = (['cert', 'key', 'ca'] as const).filter((k) => paths[k]);
  if (set.length === 0) return undefined;
  if (set.length < 3) {
    const missing = (['cert', 'key', 'ca'] as const).filter((k) => !paths[k]).map((k) => `p2p.tls.${k}`);
    throw new DfError(
      'CONFIG',
      `p2p.tls: set cert, key and ca together (missing ${missing.join(', ')}), or none to turn TLS off`,
    );
  }
  const cert = readPem('cert', paths.cert);
  const key = readPem('key', paths.key);
  const ca = readPem('ca', paths.ca);
  const chain = certificates('cert', paths.cert, cert);
  const roots = certificates('ca', paths.ca, ca);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new DfError(
      'CONFIG',
      `p2p.tls.key ${paths.key} is not an unencrypted PEM private key: ${(err as Error).message}`,
    );
  }
  if (!chain[0]!.checkPrivateKey(privateKey))
    throw new DfError('CONFIG', `p2p.tls.key ${paths.key} is not the key of p2p.tls.cert ${paths.cert}`);
  if (!signedByRoots(chain, roots))
    throw new DfError(
      'CONFIG',
      `p2p.tls.cert ${paths.cert} (${chain[0]!.subject.replace(/\n/g, ', ')}) is not signed by a CA in p2p.tls.ca ${paths.ca}; ${HINT}`,
    );
  return { cert, key, ca };
}

function readPem(what: keyof TlsPaths, path: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    throw new DfError('CONFIG', `cannot read p2p.tls.${what} ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!data.includes('-----BEGIN '))
    throw new DfError('CONFIG', `p2p.tls.${what} ${path} is not a PEM file (no -----BEGIN line)`);
  return data;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function certificates(what: keyof TlsPaths, path: string, pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERT) ?? [];
  if (!blocks.length)
    throw new DfError('CONFIG', `p2p.tls.${what} ${path} holds no PEM certificate (BEGIN CERTIFICATE)`);
  return blocks.map((b) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw new DfError(
        'CONFIG',
        `p2p.tls.${what} ${path}: a certificate does not parse: ${(err as Error).message}`,
      );
    }
  });
}

/** Whether chain[0] leads to one of `roots` through the intermediates after it. */
function signedByRoots(chain: X509Certificate[], roots: X509Certificate[]): boolean {
  const issuedBy = (c: X509Certificate, by: X509Certificate) => c.checkIssued(by) && c.verify(by.publicKey);
  let cur = chain[0]!;
  for (let depth = 0; depth < 8; depth++) {
    if (roots.some((r) => r.fingerprint256 === cur.fingerprint256 || issuedBy(cur, r))) return true;
    const next = chain.find((c) => c !== cur && issuedBy(cur, c));
    if (!next) return false;
    cur = next;
  }
  return false;
}

/** The block server's TLS: the host's certificate, and a client certificate from the cluster CA required. */
export function serverTlsOptions(t: TlsMaterial): TlsOptions {
  return { cert: t.cert, key: t.key, ca: t.ca, requestCert: true, rejectUnauthorized: true };
}

/**
 * The block client's TLS. The peer's chain must lead to the cluster CA, but its name is not checked:
 * peers are dialled by the address they announce (a pod IP, host:port), which a per-host certificate from
 * cert-manager or openssl rarely names; a certificate signed by the cluster CA is the proof of membership.
 * So a stolen member key can impersonate any member: keep the CA key off the hosts.
 */
export function clientTlsOptions(t: TlsMaterial): ConnectionOptions {
  return {
    cert: t.cert,
    key: t.key,
    ca: t.ca,
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined,
  };
}

// OpenSSL's certificate verification results, as Node reports them on a TLS socket.
const VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_PURPOSE',
]);

/** A refused or unverifiable certificate, a TLS alert, or a peer that does not speak TLS. */
function isTlsCode(code: unknown): boolean {
  return (
    typeof code === 'string' &&
    (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || VERIFY_CODES.has(code))
  );
}

const CHECK = `(check p2p.tls: ${HINT})`;
const CLOSED =
  "the TLS connection closed before an answer: the peer refused this host's certificate (not signed by " +
  'the CA in its p2p.tls.ca?) or went away';

/**
 * A failed request of the block or tracker client (src/util/raw-http.ts) with p2p.tls on, told as a TLS
 * failure: UNAUTHORIZED when the handshake failed here (the peer's certificate is not from the cluster CA, a
 * TLS alert, no TLS on the other side); NETWORK naming TLS when the connection closed before any answer,
 * which is how a Node TLS 1.3 server refuses a client certificate (no alert: the handshake had completed on
 * this side) but also what a peer that went away looks like. Undefined for anything else.
 */
export function tlsFailure(what: string, err: unknown): DfError | undefined {
  for (let e = err as TlsErrorShape | undefined, i = 0; e && i < 4; e = e.cause, i++) {
    if (isTlsCode(e.code)) {
      const reason = e.reason ?? firstLine(e.message);
      return new DfError('UNAUTHORIZED', `${what}: TLS handshake failed: ${reason} ${CHECK}`, { cause: err });
    }
  }
  if (err instanceof ClosedBeforeAnswer)
    return new DfError('NETWORK', `${what}: ${CLOSED} ${CHECK}`, { cause: err });
  return undefined;
}

/**
 * The same for a tracker call (grpc-js reports connection failures as UNAVAILABLE with the reason in the
 * text: the TLS error when the handshake failed here, "Failed to connect" when the seed closed it after).
 */
export function grpcTlsFailure(what: string, details: string, err: unknown): DfError | undefined {
  const last = details
    .replace(/^No connection established\. Last error: (Error: )?/, '')
    .replace(/\.?\s*Resolution note:.*$/s, '')
    .trim();
  if (/\b(ssl|tls|certificate|alert|self[- ]signed|wrong version number)\b/i.test(last))
    return new DfError('UNAUTHORIZED', `${what}: TLS handshake failed: ${last} ${CHECK}`, { cause: err });
  if (/Failed to connect|Connection dropped|ECONNRESET|socket hang up/i.test(last))
    return new DfError('NETWORK', `${what}: ${CLOSED} (${last}) ${CHECK}`, { cause: err });
  return undefined;
}

/**
 * What the block server tells of a refused handshake: the verification error of the client's certificate,
 * or the TLS error (no certificate, plain HTTP); undefined for a connection that just closed (a TCP probe).
 */
export function refusedClientReason(err: unknown, authorizationError: unknown): string | undefined {
  if (authorizationError) return String(authorizationError);
  const code = (err as { code?: unknown } | undefined)?.code;
  return isTlsCode(code) ? String(code) : undefined;
}

interface TlsErrorShape {
  code?: unknown;
  message?: string;
  /** OpenSSL's reason ("wrong version number") of an ERR_SSL_ error. */
  reason?: string;
  cause?: TlsErrorShape;
}

function firstLine(s: string | undefined): string {
  return (s ?? '').split('\n')[0]!.trim();
}

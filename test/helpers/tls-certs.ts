import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runOk } from './cli.js';

/** PEM file paths of one host: its certificate and key, and the CA bundle it trusts. */
export interface HostTls {
  cert: string;
  key: string;
  ca: string;
}

export interface TestPki {
  /** The cluster CA's certificate. */
  ca: string;
  /** Members: certificates signed by the cluster CA (no SAN: they name no address). */
  member: HostTls;
  member2: HostTls;
  /** A host of another cluster: its own CA, which also signed its certificate. */
  foreign: HostTls;
  /** A certificate from the foreign CA presented to the cluster (trusting the cluster CA). */
  intruder: HostTls;
}

const EXT = [
  'basicConstraints=critical,CA:FALSE',
  'keyUsage=critical,digitalSignature,keyEncipherment',
  // one certificate per host, for its block server and its client alike
  'extendedKeyUsage=serverAuth,clientAuth',
].join('\n');

/** Makes throw-away CAs and host certificates (P-256, valid 2 days) with the openssl CLI in `dir`. */
export async function makeTestPki(dir: string): Promise<TestPki> {
  const p = (name: string) => join(dir, name);
  await writeFile(p('host.ext'), EXT + '\n');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const ca = async (name: string) =>
    runOk('openssl', [
      'req',
      '-x509',
      ...ec,
      '-keyout',
      p(`${name}.key`),
      '-out',
      p(`${name}.crt`),
      '-subj',
      `/CN=${name}`,
      '-days',
      '2',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
  const host = async (name: string, by: string) => {
    await runOk('openssl', [
      'req',
      ...ec,
      '-keyout',
      p(`${name}.key`),
      '-out',
      p(`${name}.csr`),
      '-subj',
      `/CN=${name}`,
    ]);
    await runOk('openssl', [
      'x509',
      '-req',
      '-in',
      p(`${name}.csr`),
      '-CA',
      p(`${by}.crt`),
      '-CAkey',
      p(`${by}.key`),
      '-CAcreateserial',
      '-out',
      p(`${name}.crt`),
      '-days',
      '2',
      '-extfile',
      p('host.ext'),
    ]);
  };
  await ca('cluster-ca');
  await ca('foreign-ca');
  await host('member', 'cluster-ca');
  await host('member2', 'cluster-ca');
  await host('foreign', 'foreign-ca');
  const tlsOf = (name: string, ca: string): HostTls => ({
    cert: p(`${name}.crt`),
    key: p(`${name}.key`),
    ca: p(`${ca}.crt`),
  });
  return {
    ca: p('cluster-ca.crt'),
    member: tlsOf('member', 'cluster-ca'),
    member2: tlsOf('member2', 'cluster-ca'),
    foreign: tlsOf('foreign', 'foreign-ca'),
    intruder: tlsOf('foreign', 'cluster-ca'),
  };
}

// A network namespace joined to the host by a veth pair, with optional
// bandwidth shaping (tc htb on both ends), for "remote" servers on one machine.
//
//   host  veth dfbh<N> 10.213.N.1/30  <──veth──>  netns dfbench-<N>: veth dfbn<N> 10.213.N.2/30
//
// Needs root and iproute2. Every step is undone by destroy() (deleting the
// namespace removes the veth pair and its qdiscs).
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { run } from './measure.js';

export class Netns {
  private constructor(
    readonly name: string,
    /** Host-side veth (in the host namespace). */
    readonly hostVeth: string,
    /** Namespace-side veth. */
    readonly nsVeth: string,
    readonly hostIp: string,
    readonly nsIp: string,
  ) {}

  private alive = true;

  /** Creates `dfbench-<n>` with 10.213.<n>.0/30; `n` in 1..250 (defaults from the PID). */
  static async create(n = (process.pid % 250) + 1): Promise<Netns> {
    const ns = new Netns(`dfbench-${n}`, `dfbh${n}`, `dfbn${n}`, `10.213.${n}.1`, `10.213.${n}.2`);
    // A namespace left by a killed run with the same number: remove it first.
    await run('ip', ['netns', 'del', ns.name]).catch(() => undefined);
    await run('ip', ['link', 'del', ns.hostVeth]).catch(() => undefined);
    try {
      await run('ip', ['netns', 'add', ns.name]);
      await run('ip', ['link', 'add', ns.hostVeth, 'type', 'veth', 'peer', 'name', ns.nsVeth]);
      await run('ip', ['link', 'set', ns.nsVeth, 'netns', ns.name]);
      await run('ip', ['addr', 'add', `${ns.hostIp}/30`, 'dev', ns.hostVeth]);
      await run('ip', ['link', 'set', ns.hostVeth, 'up']);
      await ns.exec('ip', ['addr', 'add', `${ns.nsIp}/30`, 'dev', ns.nsVeth]);
      await ns.exec('ip', ['link', 'set', ns.nsVeth, 'up']);
      await ns.exec('ip', ['link', 'set', 'lo', 'up']);
    } catch (err) {
      await ns.destroy();
      throw err;
    }
    return ns;
  }

  /** `ip netns exec NAME cmd args...` as an argv (ip execs the command, so a spawned child's PID is the command's). */
  argv(cmd: string, args: string[]): [string, string[]] {
    return ['ip', ['netns', 'exec', this.name, cmd, ...args]];
  }

  exec(cmd: string, args: string[]) {
    const [c, a] = this.argv(cmd, args);
    return run(c, a);
  }

  /** Limits both directions of the link to `mbit` Mbit/s (htb, one class); replaces any earlier shaping. */
  async shape(mbit: number): Promise<void> {
    await this.unshape();
    for (const a of htbCommands(this.hostVeth, mbit)) await run('tc', a);
    for (const a of htbCommands(this.nsVeth, mbit)) await this.exec('tc', a);
  }

  async unshape(): Promise<void> {
    await run('tc', ['qdisc', 'del', 'dev', this.hostVeth, 'root']).catch(() => undefined);
    await this.exec('tc', ['qdisc', 'del', 'dev', this.nsVeth, 'root']).catch(() => undefined);
  }

  /** Bytes received by the host side so far: everything the namespace's servers sent (IP + TCP headers included). */
  hostRxBytes(): number {
    return Number(readFileSync(`/sys/class/net/${this.hostVeth}/statistics/rx_bytes`, 'utf8').trim());
  }

  /** The qdisc line of the namespace side (what shaping is in force), for the output. */
  async describeShaping(): Promise<string> {
    const r = await this.exec('tc', ['class', 'show', 'dev', this.nsVeth]).catch(() => undefined);
    return r?.stdout.trim().split('\n')[0] ?? 'none';
  }

  /** Deletes the namespace (and with it the veth pair). Processes inside must have been stopped first. */
  async destroy(): Promise<void> {
    if (!this.alive) return;
    this.alive = false;
    await run('ip', ['netns', 'del', this.name]).catch(() => undefined);
    await run('ip', ['link', 'del', this.hostVeth]).catch(() => undefined);
  }

  /** Synchronous last resort for 'exit' handlers. */
  destroySync(): void {
    if (!this.alive) return;
    this.alive = false;
    spawnSync('ip', ['netns', 'del', this.name]);
    spawnSync('ip', ['link', 'del', this.hostVeth]);
  }
}

/** The tc commands that limit `dev` to `mbit` Mbit/s: an htb root qdisc whose default class 1:10 has that rate. */
export function htbCommands(dev: string, mbit: number): string[][] {
  const rate = `${mbit}mbit`;
  return [
    ['qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '10'],
    ['class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:10', 'htb', 'rate', rate, 'ceil', rate],
  ];
}

/**
 * htbCommands with small packets first: the same rate split into class 1:5 (priority 0, a tenth of the rate
 * guaranteed, may borrow all of it) for TCP packets under `below` bytes (128 or 512) with no IP options and
 * the default class 1:10 (priority 1) for everything else. Under 128 bytes: pure ACKs (with timestamps and
 * SACK blocks). Under 512: also requests (an HTTP range request of dfnode's block client is ~350 bytes on
 * the wire; BitTorrent's are under 128 already). Bulk data goes in full-sized segments, or larger with GSO.
 * ACKs are about 2 % of the data they acknowledge and requests far less, so the class never runs out of rate
 * and its packets never wait behind bulk data.
 */
export function smallFirstCommands(dev: string, mbit: number, below: 128 | 512): string[][] {
  const rate = `${mbit}mbit`;
  const leaf = (id: string, tenths: number, prio: string) =>
    `class add dev ${dev} parent 1:1 classid ${id} htb rate ${(mbit * tenths) / 10}mbit ceil ${rate} prio ${prio} quantum 3028`;
  return [
    `qdisc add dev ${dev} root handle 1: htb default 10`,
    `class add dev ${dev} parent 1: classid 1:1 htb rate ${rate} ceil ${rate} quantum 3028`,
    leaf('1:5', 1, '0'),
    leaf('1:10', 9, '1'),
    // IPv4, protocol TCP, header length 5 words, total length < `below` (a power of two)
    `filter add dev ${dev} parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff ` +
      `match u8 0x05 0x0f at 0 match u16 0x0000 0x${(0x10000 - below).toString(16)} at 2 flowid 1:5`,
  ].map((c) => c.split(' '));
}

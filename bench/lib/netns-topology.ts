// Several "hosts" on one machine: each a network namespace with one veth to a bridge in a hub namespace,
// every link shaped with tc htb (upload on the host's side, download on the hub's side).
//
//   netns <prefix>-hub:  bridge br0  ── veth h0 ... h<n-1>
//   netns <prefix>-<host>: eth0 10.77.0.<i+1>/24  (lo up)
//
// Everything lives inside namespaces whose names carry a random suffix: no interface, address or route
// is added to the host's own namespace, so parallel runs cannot collide. Needs root and iproute2.
// destroy() deletes every namespace (and with it the veths, bridge and qdiscs); processes inside must be
// stopped first (by PID: see NetnsHost.spawn).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Daemon } from './daemon.js';
import { run, type RunOptions } from './measure.js';
import { htbCommands, smallFirstCommands } from './netns.js';

export interface HostSpec {
  name: string;
  /** Link rate in Mbit/s, both directions; 0 or undefined: unshaped. */
  mbit?: number;
}

export interface TopologyOptions {
  hosts: HostSpec[];
  /** Namespace name prefix; a random suffix is always added. */
  prefix?: string;
  /**
   * Buffer of each shaped link where the kernel has no fair queue, in ms at the link rate (a pfifo
   * leaf). Default: htb's default leaf, a FIFO of the veth's txqueuelen (1000 packets: 600 ms at 20 Mbit/s).
   */
  queueMs?: number;
  /**
   * Where the kernel has no fair queue: send small TCP packets (under this many bytes: 128, pure ACKs; 512,
   * ACKs and requests) ahead of bulk data in each shaped link (an htb class of priority 0 picked by a u32
   * filter), as a host's fq_codel would: a flow of ACKs and requests never builds a queue, so fq_codel
   * serves it as a sparse flow, ahead of the bulk flows. Without it a host whose link is full both ways (a
   * seed downloading while it uploads) holds the ACKs of its download, and a node its requests, behind its
   * upload in a FIFO of up to 600 ms. 0 or unset: the FIFO.
   */
  smallFirst?: 0 | 128 | 512;
}

const live = new Set<NetnsTopology>();
process.once('exit', () => {
  for (const t of live) t.destroySync();
});

export class NetnsHost {
  constructor(
    readonly name: string,
    /** Namespace name (for `ip netns exec` / `nsenter --net=/run/netns/NAME`). */
    readonly ns: string,
    readonly ip: string,
    /** The hub-side veth of this host's link. */
    readonly hubVeth: string,
    private readonly hub: string,
    readonly mbit: number,
    readonly queueMs = 0,
    readonly smallFirst: 0 | 128 | 512 = 0,
  ) {}

  /** `ip netns exec NS cmd args...` as an argv (ip execs the command: a spawned child's PID is the command's). */
  argv(cmd: string, args: string[]): [string, string[]] {
    return ['ip', ['netns', 'exec', this.ns, cmd, ...args]];
  }

  /**
   * The same with `nsenter --net`: only the network namespace changes. `ip netns exec` also gives the command
   * a mount namespace of its own (a slave of the host's), so mounts it makes (FUSE, overlay) stay invisible
   * to other processes: a `dfnode run` and the containerd that stacks overlays on its FUSE mounts need this.
   */
  netArgv(cmd: string, args: string[]): [string, string[]] {
    return ['nsenter', [`--net=/run/netns/${this.ns}`, '--', cmd, ...args]];
  }

  exec(cmd: string, args: string[], opts: RunOptions = {}) {
    const [c, a] = this.argv(cmd, args);
    return run(c, a, opts);
  }

  /** A long-running process inside the namespace; stop it with Daemon.stop() (by PID). */
  spawn(label: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): Daemon {
    const [c, a] = this.argv(cmd, args);
    return Daemon.spawn(label, c, a, env);
  }

  /** Bytes this host sent and received on its link so far (wire bytes: Ethernet/IP/TCP headers included). */
  async counters(): Promise<{ tx: number; rx: number }> {
    const r = await run('ip', ['-n', this.ns, '-j', '-s', 'link', 'show', 'dev', 'eth0']);
    const j = JSON.parse(r.stdout) as { stats64: { tx: { bytes: number }; rx: { bytes: number } } }[];
    return { tx: j[0]!.stats64.tx.bytes, rx: j[0]!.stats64.rx.bytes };
  }

  /**
   * Shapes both directions of the link to `mbit` Mbit/s (htb, with an fq_codel or sfq leaf when available,
   * else small packets first when smallFirst); 0 removes shaping.
   */
  async shape(mbit: number): Promise<void> {
    await run('ip', ['netns', 'exec', this.ns, 'tc', 'qdisc', 'del', 'dev', 'eth0', 'root']).catch(
      () => undefined,
    );
    await run('ip', ['netns', 'exec', this.hub, 'tc', 'qdisc', 'del', 'dev', this.hubVeth, 'root']).catch(
      () => undefined,
    );
    if (!mbit) return;
    for (const [ns, dev] of [
      [this.ns, 'eth0'],
      [this.hub, this.hubVeth],
    ] as const) {
      const tc = (...a: string[]) => run('ip', ['netns', 'exec', ns, 'tc', ...a]);
      const fair = await tc('qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'fq_codel').then(
        () => tc('qdisc', 'del', 'dev', dev, 'root').then(() => true),
        () => false,
      );
      const small = fair ? 0 : this.smallFirst;
      for (const a of small ? smallFirstCommands(dev, mbit, small) : htbCommands(dev, mbit)) await tc(...a);
      // a fair leaf queue where the kernel has one (flows share the link as on a real NIC); else htb's pfifo
      const leaves = [['fq_codel'], ['sfq']];
      if (this.queueMs > 0) {
        const packets = Math.max(16, Math.round((mbit * 1e6 * this.queueMs) / 1000 / 8 / 1514));
        leaves.push(['pfifo', 'limit', String(packets)]);
      }
      for (const leaf of leaves) {
        if (
          await tc('qdisc', 'add', 'dev', dev, 'parent', '1:10', 'handle', '10:', ...leaf).then(
            () => true,
            () => false,
          )
        )
          break;
      }
    }
  }
}

export class NetnsTopology {
  private alive = true;
  private readonly byName = new Map<string, NetnsHost>();

  private constructor(
    readonly hub: string,
    readonly hosts: NetnsHost[],
    private readonly namespaces: string[],
  ) {
    for (const h of hosts) this.byName.set(h.name, h);
    live.add(this);
  }

  /** Builds the hub, one namespace per host (10.77.0.1, .2, ... in `hosts` order) and shapes each link. */
  static async create(opts: TopologyOptions): Promise<NetnsTopology> {
    if (opts.hosts.length > 250) throw new Error('at most 250 hosts');
    const prefix = `${opts.prefix ?? 'dft'}-${randomBytes(3).toString('hex')}`;
    const hub = `${prefix}-hub`;
    const namespaces = [hub];
    const hosts = opts.hosts.map(
      (h, i) =>
        new NetnsHost(
          h.name,
          `${prefix}-${h.name}`,
          `10.77.0.${i + 1}`,
          `h${i}`,
          hub,
          h.mbit ?? 0,
          opts.queueMs ?? 0,
          opts.smallFirst ?? 0,
        ),
    );
    const topo = new NetnsTopology(hub, hosts, namespaces);
    try {
      await run('ip', ['netns', 'add', hub]);
      const inHub = (...a: string[]) => run('ip', ['-n', hub, ...a]);
      await inHub('link', 'add', 'br0', 'type', 'bridge');
      await inHub('link', 'set', 'br0', 'up');
      await inHub('link', 'set', 'lo', 'up');
      for (const h of hosts) {
        await run('ip', ['netns', 'add', h.ns]);
        namespaces.push(h.ns);
        await inHub('link', 'add', h.hubVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns);
        await inHub('link', 'set', h.hubVeth, 'master', 'br0');
        await inHub('link', 'set', h.hubVeth, 'up');
        const inHost = (...a: string[]) => run('ip', ['-n', h.ns, ...a]);
        await inHost('addr', 'add', `${h.ip}/24`, 'dev', 'eth0');
        await inHost('link', 'set', 'eth0', 'up');
        await inHost('link', 'set', 'lo', 'up');
        if (h.mbit) await h.shape(h.mbit);
      }
    } catch (err) {
      await topo.destroy();
      throw err;
    }
    return topo;
  }

  host(name: string): NetnsHost {
    const h = this.byName.get(name);
    if (!h) throw new Error(`no host ${name} in the topology`);
    return h;
  }

  /** Deletes every namespace of the topology (veths, bridge and qdiscs go with them). Safe to call twice. */
  async destroy(): Promise<void> {
    if (!this.alive) return;
    this.alive = false;
    live.delete(this);
    for (const ns of [...this.namespaces].reverse())
      await run('ip', ['netns', 'del', ns]).catch(() => undefined);
  }

  /** Synchronous last resort for 'exit' handlers. */
  destroySync(): void {
    if (!this.alive) return;
    this.alive = false;
    live.delete(this);
    for (const ns of [...this.namespaces].reverse()) spawnSync('ip', ['netns', 'del', ns]);
  }
}

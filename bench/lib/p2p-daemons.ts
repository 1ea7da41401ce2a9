// `dfnode run` daemons as the node hosts of a P2pCluster, the way a cluster runs dfnode (a DaemonSet): each
// started, and idle, before the clock; then every one is asked at the same instant to preheat the image over
// its control socket, as `dfnode preheat REF` on a running host does. Each daemon is timed from that request
// to its answer, and its CPU counted over the same span.
import { join } from 'node:path';
import { callControl } from '../../src/cli/control-client.js';
import type { PreheatSummary } from '../../src/daemon/control-preheat.js';
import { socketAccepts } from '../../src/util/unix-socket.js';
import { DfnodeRun } from './dfnode-run.js';
import type { NetnsHost } from './netns-topology.js';
import { cli, type P2pCluster, type PreheatResult } from './p2p-cluster.js';
import { processTimes } from './measure.js';

/** A preheat that has not answered by then fails the phase (a daemon that hangs must not hang the bench). */
const PREHEAT_TIMEOUT_MS = 15 * 60_000;

/** A daemon's preheat: `ms` from the request to its answer (not from a process's spawn). */
export interface DaemonPreheat extends PreheatResult {
  /** CPU seconds (user + system) the daemon used from the request until every daemon had answered. */
  cpuS: number;
  /** The system (kernel) part of cpuS. */
  systemS: number;
}

/**
 * Starts a `dfnode run` in each of `hosts` (fresh cache, P2P through the cluster's seeds), waits until each
 * serves its control socket and a second more, then preheats the cluster's image through every daemon at
 * once. The daemons keep running (and serving peers) until stop().
 */
export async function preheatThroughDaemons(
  cluster: P2pCluster,
  hosts: NetnsHost[],
  o: {
    dir: string;
    env?: NodeJS.ProcessEnv;
    nodeFlags?: string[];
    /**
     * Before the clock, every daemon preheats this image at once (untimed): the daemons, and the seed, have
     * run their code paths once, as daemons that have been up for a while have (P2pCluster.warmRef).
     */
    warmRef?: string;
    /** Each daemon serves its metrics on 127.0.0.1:PORT in its namespace (off by default). */
    metricsPort?: number;
    /** Called just before the requests go out (the clock's start). */
    onStart?: () => void | Promise<void>;
  },
): Promise<{ results: DaemonPreheat[]; stop(): Promise<void> }> {
  const daemons: DfnodeRun[] = [];
  const stop = async () => {
    await Promise.all(daemons.map((d) => d.stop().catch(() => undefined)));
  };
  try {
    // every start settles before a failure is thrown: none is left running unstopped
    const started = await Promise.allSettled(
      hosts.map(async (h) => {
        const d = await DfnodeRun.start({
          cli: cli('dfnode', true),
          dir: join(o.dir, h.name),
          launch: (cmd, args) => h.netArgv(cmd, args),
          env: { DFNODE_P2P_CLUSTER_TOKEN: cluster.token, ...cluster.memberEnv(h), ...o.env },
          nodeFlags: o.nodeFlags,
          ...(o.metricsPort ? { metricsPort: o.metricsPort } : {}),
          // the daemon's log (and what --node-flags make Node print): kept with --keep
          logFile: join(o.dir, h.name, 'dfnode.log'),
          timeoutMs: 120_000,
        });
        daemons.push(d);
        const deadline = Date.now() + 60_000;
        while (!(await socketAccepts(d.controlSocket))) {
          if (Date.now() > deadline) throw new Error(`dfnode run in ${h.name} serves no control socket`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }),
    );
    const failed = started.find((x) => x.status === 'rejected');
    if (failed) throw failed.reason;
    const byHost = new Map(daemons.map((d) => [d.dir, d]));
    const ordered = hosts.map((h) => byHost.get(join(o.dir, h.name))!);
    if (o.warmRef) {
      const ref = o.warmRef;
      await Promise.all(
        ordered.map((d) =>
          callControl(
            d.controlSocket,
            'preheat',
            { ref },
            { signal: AbortSignal.timeout(PREHEAT_TIMEOUT_MS) },
          ),
        ),
      );
    }
    await new Promise((r) => setTimeout(r, 1000));
    await o.onStart?.();
    const t0s = ordered.map((d) => processTimes(d.daemon.pid));
    const t0 = Date.now();
    const answers = await Promise.all(
      ordered.map(async (d) => {
        const r = (await callControl(
          d.controlSocket,
          'preheat',
          { ref: cluster.ref },
          { signal: AbortSignal.timeout(PREHEAT_TIMEOUT_MS) },
        )) as PreheatSummary;
        return { r, ms: Date.now() - t0 };
      }),
    );
    // user and system from one read of each daemon's /proc/PID/stat
    const used = ordered.map((d, i) => {
      const t = processTimes(d.daemon.pid);
      return { cpu: t.user + t.system - t0s[i]!.user - t0s[i]!.system, system: t.system - t0s[i]!.system };
    });
    const results = answers.map(({ r, ms }, i) => ({
      host: hosts[i]!.name,
      ms,
      bytes: r.bytes,
      bySource: r.bySource,
      fill: r.fill,
      cacheDir: ordered[i]!.cacheDir,
      cpuS: used[i]!.cpu,
      systemS: used[i]!.system,
    }));
    return { results, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

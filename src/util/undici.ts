/**
 * The parts of undici that dfnode uses (Agent, the request API, header parsing), loaded from
 * undici's own modules rather than its index. The index loads all of undici (fetch, WebSocket, cookies, cache
 * stores, proxies, mock agents), and its cookies module makes Node load the copy of undici inside Node as
 * well: in the bundled CLI that cost 40 ms of CPU at the start of every command that makes a request, against
 * 18 ms for these modules. undici 7 publishes these files and has no "exports" map to hide them;
 * test/util/undici.test.ts checks that they are the objects the index exports.
 *
 * Import `type { Dispatcher }` and other types from 'undici' as before: only values come from here.
 */
import AgentClass from 'undici/lib/dispatcher/agent.js';
import api from 'undici/lib/api/index.js';
import coreUtil from 'undici/lib/core/util.js';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';

// what undici's index does: request(), stream(), pipeline(), ... on every dispatcher
Object.assign(DispatcherClass.prototype, api);

export { AgentClass as Agent };
export const parseHeaders = coreUtil.parseHeaders;

// Types of the undici modules that src/util/undici.ts loads directly (undici's own typings cover its index only).
declare module 'undici/lib/dispatcher/agent.js' {
  import { Agent } from 'undici';
  export default Agent;
}
declare module 'undici/lib/dispatcher/dispatcher.js' {
  import { Dispatcher } from 'undici';
  export default Dispatcher;
}
declare module 'undici/lib/api/index.js' {
  const api: Record<string, unknown>;
  export default api;
}
declare module 'undici/lib/core/util.js' {
  import { util } from 'undici';
  const coreUtil: typeof util;
  export default coreUtil;
}

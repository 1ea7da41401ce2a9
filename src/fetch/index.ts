export * from './types.js';
export { BlobFetcher, type BlobFetcherInit, type BlobFetcherOptions } from './blob-fetcher.js';
export { BlockMemoryCache } from './block-memory-cache.js';
export { FetchScheduler, type FetchSchedulerOptions, type ScheduledTask } from './scheduler.js';
export { FetchStats, type FetchMetricsSink } from './fetch-stats.js';
export { openLayer, type OpenLayerOptions, type OpenedLayer } from './open-layer.js';
export { RegistryBlockSource } from './registry-block-source.js';
export { TokenBucket } from '../util/token-bucket.js';
export { realTimers, type Timers } from '../util/timers.js';

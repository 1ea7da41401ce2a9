/**
 * Connections a P2P listener keeps open at once (p2p.maxConnections, p2p.maxConnectionsPerHost): a node's
 * block server in all, a seed's (its block server and its gRPC tracker; every node of its swarms keeps up to
 * 18 connections to it), and from one address.
 */
export const DEFAULT_MAX_CONNECTIONS = 4096;
export const SEED_MAX_CONNECTIONS = 65536;
export const DEFAULT_MAX_CONNECTIONS_PER_HOST = 1024;

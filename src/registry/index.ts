export { parseReference, ImageReference, DOCKER_HUB_REGISTRY } from './reference.js';
export {
  DockerConfigCredentials,
  StaticCredentials,
  chainCredentials,
  runCredentialHelper,
  normalizeRegistryKey,
  defaultDockerConfigPath,
  type Credential,
  type CredentialProvider,
} from './credentials.js';
export { parseWwwAuthenticate, type AuthChallenge } from './www-authenticate.js';
export { RegistryAuth, type RepoScope } from './auth.js';
export {
  RegistryClient,
  parseContentRange,
  type RegistryClientOptions,
  type RequestOptions,
  type Manifest,
} from './client.js';
export type { PushBlobOptions, PushResult } from './blob-upload.js';
export {
  RegistryTransport,
  type TransportOptions,
  type SendRequest,
  type SendResponse,
} from './transport.js';
export { RegistryRangeReader } from './range-reader.js';
export { MediaTypes, MANIFEST_ACCEPT, isIndexMediaType } from './media-types.js';
export { computeDigest, validateDigest } from './digest.js';

export * from './types.js';
export { FileRangeReader } from './file-range-reader.js';
export {
  FOOTER_SIZE,
  FORMAT_MAJOR,
  FORMAT_MINOR,
  decodeFooter,
  encodeFooter,
  type Footer,
} from './footer.js';
export { Toc, type BlockInfo, type InodeStat } from './toc.js';
export { encodeToc, type TocInput, type EncodedToc } from './toc-encoder.js';
export { compressBlock, decodeStoredBlock, type CompressedBlock } from './block-codec.js';
export { CompressPool } from './compress-pool.js';
export { DfbReader, type DfbReaderOpenOptions } from './reader.js';
export { DfbWriter, type DfbWriterOptions } from './writer.js';

// The OCI registry tier: each layer is an OCI artifact (artifactType application/vnd.ryra-vm.layer.v1)
// tagged from its content key. Its config is the layer's manifest file; its blobs are the layer's
// files in chunks of at most 512 MiB (registries cap a blob; Tart and Cirrus chunk VM disks alike),
// zstd-compressed where a sample says it pays. Each blob descriptor's annotations name its file,
// chunk index and offset, whether it is compressed, and the chunk's uncompressed size and sha256.
// A push skips blobs the registry has; a pull first checks the manifest against the planned files
// (planPull: every title, media type, size and annotation, before a byte is fetched or written),
// then streams every chunk straight to its offset in the staging file, checking the blob digest and
// the uncompressed sha256 as it streams. Only the caller's planned names become paths (plannedPath).
// Never fatal: a registry that is down, stalls or refuses the token costs one warning and at most
// one connect or stall bound, then the tier is off for the run.
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, log as globalLog, type Logger } from '../log.js';
import { isPlainName, plannedPath } from './confine.js';
import { OCI_MANIFEST, OciClient, RegistryError, parseRegistryRef } from './oci.js';
import type { RemoteTier, RestoreResult, SaveResult } from './tier.js';

export const ARTIFACT_TYPE = 'application/vnd.ryra-vm.layer.v1';
/** The layer's own manifest (the file among a layer's files ending in .manifest.json). */
export const CONFIG_MEDIA_TYPE = 'application/vnd.ryra-vm.layer.manifest.v1+json';
export const FILE_MEDIA_TYPE = 'application/vnd.ryra-vm.layer.file.v1';
export const FILE_MEDIA_TYPE_ZSTD = `${FILE_MEDIA_TYPE}+zstd`;
const EMPTY_CONFIG = { mediaType: 'application/vnd.oci.empty.v1+json', bytes: Buffer.from('{}') };
export const Annotations = {
  title: 'org.opencontainers.image.title',
  key: 'vnd.ryra-vm.key',
  chunk: 'vnd.ryra-vm.chunk',
  offset: 'vnd.ryra-vm.offset',
  fileSize: 'vnd.ryra-vm.file-size',
  compressed: 'vnd.ryra-vm.compressed',
  size: 'vnd.ryra-vm.uncompressed-size',
  sha256: 'vnd.ryra-vm.uncompressed-sha256',
} as const;

export const MAX_CHUNK_BYTES = 512 * 2 ** 20;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface OciManifest {
  schemaVersion: 2;
  mediaType: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** The tag for a content key: the key itself when it fits the tag grammar, else a readable prefix and a hash. */
export function tagFor(key: string): string {
  if (/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(key)) return key;
  const hash = crypto.createHash('sha256').update(key).digest('hex').slice(0, 32);
  const readable = key.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[.-]+/, '').slice(0, 90);
  return readable ? `${readable}-${hash}` : hash;
}

export interface TransferOptions {
  /** Largest blob (default 512 MiB). */
  chunkBytes?: number;
  /** Blobs in flight at once (default 4). */
  concurrency?: number;
  /** Where compressed chunks wait for their upload (default the OS temp dir). */
  tmpDir?: string;
  signal?: AbortSignal;
  /** A pull: the most bytes the layer's files may add up to (more is refused before a blob is fetched). */
  maxBytes?: number;
}

export interface TransferStats {
  blobs: number;
  /** Blobs sent (a push) or fetched (a pull). */
  transferred: number;
  /** Blobs the registry had already (a push). */
  skipped: number;
  /** Bytes on the wire. */
  wireBytes: number;
  /** Bytes of the files. */
  fileBytes: number;
  ms: number;
}

/** Runs `fn` over `items`, `limit` at a time; the first failure aborts the rest and is thrown. */
async function eachLimit<T>(items: T[], limit: number, parent: AbortSignal | undefined, fn: (item: T, signal: AbortSignal) => Promise<void>): Promise<void> {
  const ctrl = new AbortController();
  const signal = parent ? AbortSignal.any([parent, ctrl.signal]) : ctrl.signal;
  let next = 0;
  let failed: { err: unknown } | undefined;
  const worker = async () => {
    while (!failed && next < items.length) {
      const item = items[next++];
      try {
        signal.throwIfAborted();
        await fn(item, signal);
      } catch (err) {
        if (!failed) {
          failed = { err };
          ctrl.abort(err);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed) throw failed.err;
}

/** A pass-through that hashes (unless told not to) and counts, failing past `max` bytes. */
class Meter extends Transform {
  readonly hash = crypto.createHash('sha256');
  bytes = 0;
  constructor(
    private readonly max = Infinity,
    private readonly what = 'stream',
    private readonly hashing = true,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length;
    if (this.bytes > this.max) return cb(new RegistryError(`${this.what} is longer than its ${this.max} bytes`, 'protocol'));
    if (this.hashing) this.hash.update(chunk);
    cb(null, chunk);
  }
  hex(): string {
    return this.hash.digest('hex');
  }
}

const sink = () => new Writable({ write: (_c, _e, cb) => cb() });

/** `src → before → zstd ARGS → after → dst`, all streamed; fails when zstd does. */
async function throughZstd(args: string[], src: Readable, before: Transform, after: Transform, dst: Writable, signal: AbortSignal): Promise<void> {
  const ctrl = new AbortController();
  const sig = AbortSignal.any([signal, ctrl.signal]);
  const child = spawn('zstd', ['-q', ...args], { stdio: ['pipe', 'pipe', 'pipe'], signal: sig });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d).length > 4000 && (stderr = stderr.slice(-2000)));
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, sig2) => (code === 0 ? resolve() : reject(new Error(`zstd ${args.join(' ')} failed (${code ?? sig2}): ${stderr.trim().slice(-300)}`))));
  });
  const parts = [pipeline(src, before, child.stdin, { signal: sig }), pipeline(child.stdout, after, dst, { signal: sig }), exited];
  // The first failure ends the others (zstd is killed through the signal).
  await Promise.all(parts.map((p) => p.catch((err) => (ctrl.abort(err), Promise.reject(err)))));
}

/** Whether zstd shrinks a file: a fast compression of a few slices from its middle parts (not its header). */
async function compressionPays(file: string, size: number, signal: AbortSignal): Promise<boolean> {
  if (size < 4096) return false;
  const slices = size <= 1 << 20 ? [[0, size]] : [0, 1, 2, 3].map((i) => [Math.floor(((i + 0.5) * size) / 4), 256 << 10]);
  const fd = await fs.promises.open(file, 'r');
  const parts: Buffer[] = [];
  try {
    for (const [at, n] of slices) {
      const b = Buffer.alloc(Math.min(n, size - at));
      const { bytesRead } = await fd.read(b, 0, b.length, at);
      parts.push(b.subarray(0, bytesRead));
    }
  } finally {
    await fd.close();
  }
  const sample = Buffer.concat(parts);
  let out = 0;
  const counter = new Transform({
    transform(c: Buffer, _e, cb) {
      out += c.length;
      cb();
    },
  });
  await throughZstd(['-1', '-c', '-T1'], Readable.from([sample]), new Meter(), counter, sink(), signal);
  return out < sample.length * 0.85;
}

interface Chunk {
  file: string;
  index: number;
  offset: number;
  size: number;
  fileSize: number;
  compress: boolean;
}

/**
 * Pushes `files` (names relative to `dir`) as the artifact tagged from `key`. Each chunk is read
 * twice: once to hash it (and, when compressed, to compress it into a temp file, so a 512 MiB chunk
 * never sits in memory and its digest is known before the upload, as the HEAD skip needs), once to
 * upload it; a blob the registry has is not read again.
 */
export async function pushLayer(client: OciClient, key: string, files: string[], dir: string, opts: TransferOptions = {}): Promise<TransferStats> {
  const started = Date.now();
  const chunkBytes = opts.chunkBytes ?? MAX_CHUNK_BYTES;
  const limit = opts.concurrency ?? 4;
  const stats: TransferStats = { blobs: 0, transferred: 0, skipped: 0, wireBytes: 0, fileBytes: 0, ms: 0 };
  const configFile = files.find((f) => f.endsWith('.manifest.json'));
  const dataFiles = files.filter((f) => f !== configFile);
  const tmp = fs.mkdtempSync(path.join(opts.tmpDir ?? os.tmpdir(), 'ryra-oci-push-'));
  const signal = opts.signal ?? new AbortController().signal;
  try {
    const chunks: Chunk[] = [];
    const sizes = new Map<string, number>();
    for (const f of dataFiles) sizes.set(f, fs.statSync(path.join(dir, f)).size);
    const compress = new Map<string, boolean>();
    await eachLimit(dataFiles, limit, signal, async (f, sig) => void compress.set(f, await compressionPays(path.join(dir, f), sizes.get(f)!, sig)));
    for (const f of dataFiles) {
      const size = sizes.get(f)!;
      stats.fileBytes += size;
      const n = Math.max(1, Math.ceil(size / chunkBytes));
      for (let i = 0; i < n; i++) chunks.push({ file: f, index: i, offset: i * chunkBytes, size: Math.min(chunkBytes, size - i * chunkBytes), fileSize: size, compress: compress.get(f)! });
    }
    const layers: Descriptor[] = new Array(chunks.length);
    // Chunks with equal bytes (zeros) are one blob, sent once.
    const sent = new Map<string, Promise<void>>();
    const upload = (digest: string, size: number, body: () => Readable, sig: AbortSignal): Promise<void> => {
      stats.blobs++;
      const p =
        sent.get(digest) ??
        (async () => {
          if (await client.blobExists(digest, sig, 'pull,push')) {
            stats.skipped++;
            return;
          }
          await client.pushBlob(digest, size, body, sig);
          stats.transferred++;
          stats.wireBytes += size;
        })();
      sent.set(digest, p);
      return p;
    };
    await eachLimit(chunks.map((c, i) => [c, i] as const), limit, signal, async ([c, i], sig) => {
      const file = path.join(dir, c.file);
      const range = () => (c.size ? fs.createReadStream(file, { start: c.offset, end: c.offset + c.size - 1 }) : Readable.from([]));
      const raw = new Meter();
      let digest: string;
      let size: number;
      let body: () => Readable;
      if (c.compress) {
        const temp = path.join(tmp, `${i}.zst`);
        const blob = new Meter();
        await throughZstd(['-3', '-c', '-T1'], range(), raw, blob, fs.createWriteStream(temp), sig);
        digest = `sha256:${blob.hex()}`;
        size = blob.bytes;
        body = () => fs.createReadStream(temp);
      } else {
        await pipeline(range(), raw, sink(), { signal: sig });
        digest = `sha256:${raw.hex()}`;
        size = c.size;
        body = range;
      }
      if (raw.bytes !== c.size) throw new Error(`${c.file} changed while it was pushed (read ${raw.bytes} bytes at ${c.offset}, expected ${c.size})`);
      const rawHex = c.compress ? raw.hex() : digest.slice(7);
      try {
        await upload(digest, size, body, sig);
      } finally {
        if (c.compress) fs.rmSync(path.join(tmp, `${i}.zst`), { force: true });
      }
      layers[i] = {
        mediaType: c.compress ? FILE_MEDIA_TYPE_ZSTD : FILE_MEDIA_TYPE,
        digest,
        size,
        annotations: {
          [Annotations.title]: c.file,
          [Annotations.chunk]: String(c.index),
          [Annotations.offset]: String(c.offset),
          [Annotations.fileSize]: String(c.fileSize),
          [Annotations.compressed]: String(c.compress),
          [Annotations.size]: String(c.size),
          [Annotations.sha256]: rawHex,
        },
      };
    });
    let config: Descriptor;
    if (configFile) {
      const bytes = fs.readFileSync(path.join(dir, configFile));
      config = { mediaType: CONFIG_MEDIA_TYPE, digest: `sha256:${crypto.createHash('sha256').update(bytes).digest('hex')}`, size: bytes.length, annotations: { [Annotations.title]: configFile } };
      await upload(config.digest, bytes.length, () => fs.createReadStream(path.join(dir, configFile)), signal);
    } else {
      const bytes = EMPTY_CONFIG.bytes;
      config = { mediaType: EMPTY_CONFIG.mediaType, digest: `sha256:${crypto.createHash('sha256').update(bytes).digest('hex')}`, size: bytes.length };
      await upload(config.digest, bytes.length, () => Readable.from([bytes]), signal);
    }
    const manifest: OciManifest = { schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: ARTIFACT_TYPE, config, layers, annotations: { [Annotations.key]: key } };
    await client.putManifest(tagFor(key), Buffer.from(JSON.stringify(manifest)), signal);
    stats.ms = Date.now() - started;
    return stats;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The artifact does not hold what was asked (another file set, another key under the same tag, not ours). */
export class LayerMismatch extends Error {
  override name = 'LayerMismatch';
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const isObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
const show = (v: unknown) => (JSON.stringify(v) ?? String(v)).slice(0, 120);

// The one way a pulled name becomes a path (cache/confine.ts), for every tier.
export { plannedPath };

/** One chunk of a planned file as the manifest describes it, every field checked. */
export interface PlannedChunk {
  /** Its index among the file's chunks. */
  chunk: number;
  digest: string;
  /** The blob's size on the wire. */
  blobSize: number;
  /** Where its bytes go in the file, how many, and their sha256 (hex). */
  offset: number;
  size: number;
  sha256: string;
  compressed: boolean;
}

/**
 * What a pull writes, computed from the manifest before a byte is: each planned file by its index
 * in `files` (the caller's list), with its chunks in order. The config blob is the one chunk of the
 * layer's manifest file.
 */
export interface PullPlan {
  files: readonly string[];
  entries: { file: number; chunks: PlannedChunk[] }[];
  /** What the files add up to. */
  bytes: number;
}

/**
 * Checks the manifest `m` against the planned `files` and returns the plan, or throws a
 * LayerMismatch naming the field: the config is the planned manifest file (the one ending in
 * .manifest.json) or, without one, the empty config; every blob's title is one of the other
 * planned files and each of them has blobs; media types, digests, sizes and annotations agree
 * (chunk indices 0..n-1 once each, contiguous offsets, sizes that add up to the file's, a plain
 * blob's digest its uncompressed sha256, a compressed blob no bigger than what it unpacks to), to
 * no more than `maxBytes` in all.
 */
export function planPull(m: OciManifest, key: string, files: readonly string[], maxBytes: number): PullPlan {
  // The caller's own list: a name that is not plain or comes twice is its mistake, not the registry's.
  files.forEach((f, i) => {
    if (!isPlainName(f) || files.indexOf(f) !== i) throw new Error(`planned file ${show(f)} is not a plain file name, or is named twice`);
  });
  const refuse = (why: string): never => {
    throw new LayerMismatch(why);
  };
  if (!isObject(m) || m.mediaType !== OCI_MANIFEST || m.artifactType !== ARTIFACT_TYPE || !isObject(m.config) || !Array.isArray(m.layers)) {
    refuse(`not a ryra-vm layer artifact (mediaType ${show(isObject(m) ? m.mediaType : m)}, artifactType ${show(isObject(m) ? m.artifactType : undefined)})`);
  }
  if (!isObject(m.annotations) || m.annotations[Annotations.key] !== key) refuse(`the tag holds another key (${show(isObject(m.annotations) ? m.annotations[Annotations.key] : undefined)})`);
  const descriptor = (d: Descriptor, at: string) => {
    if (typeof d.digest !== 'string' || !DIGEST_RE.test(d.digest)) refuse(`${at} digest ${show(d.digest)} is not a sha256 digest`);
    if (!Number.isSafeInteger(d.size) || d.size < 0) refuse(`${at} size ${show(d.size)} is not a byte count`);
    if (d.annotations !== undefined && !isObject(d.annotations)) refuse(`${at} annotations ${show(d.annotations)} are not an object`);
    return (d.annotations ?? {}) as Record<string, unknown>;
  };
  const entries: PullPlan['entries'] = [];
  let bytes = 0;

  // The config: the layer's manifest file, or the empty config of a layer without one.
  const configFile = files.findIndex((f) => f.endsWith('.manifest.json'));
  const c = m.config;
  const ca = descriptor(c, 'config');
  if (configFile >= 0) {
    if (c.mediaType !== CONFIG_MEDIA_TYPE) refuse(`config media type ${show(c.mediaType)} is not ${CONFIG_MEDIA_TYPE} (the planned ${files[configFile]})`);
    if (ca[Annotations.title] !== files[configFile]) refuse(`config title ${show(ca[Annotations.title])} is not the planned ${files[configFile]}`);
    entries.push({ file: configFile, chunks: [{ chunk: 0, digest: c.digest, blobSize: c.size, offset: 0, size: c.size, sha256: c.digest.slice(7), compressed: false }] });
    bytes += c.size;
  } else if (c.mediaType !== EMPTY_CONFIG.mediaType || ca[Annotations.title] !== undefined) {
    refuse(`config media type ${show(c.mediaType)}, title ${show(ca[Annotations.title])}: no manifest file is planned (${files.join(', ')}), so the config must be ${EMPTY_CONFIG.mediaType} without a title`);
  }

  // The blobs, each checked on its own: the file it belongs to, its media type, its annotations.
  const byFile = new Map<number, { chunk: PlannedChunk; fileSize: number; at: string }[]>();
  m.layers.forEach((d: Descriptor, n) => {
    let at = `layer ${n}`;
    if (!isObject(d)) refuse(`${at} is not a descriptor`);
    const a = descriptor(d, at);
    const title = a[Annotations.title];
    const i = typeof title === 'string' ? files.indexOf(title) : -1;
    if (i < 0) refuse(`${at} title ${show(title)} is not one of the planned files (${files.join(', ')})`);
    if (i === configFile) refuse(`${at} title ${show(title)} names the planned manifest file, which is the config (each planned file comes once)`);
    at = `${at} (${files[i]})`;
    if (d.mediaType !== FILE_MEDIA_TYPE && d.mediaType !== FILE_MEDIA_TYPE_ZSTD) refuse(`${at} media type ${show(d.mediaType)} is not ${FILE_MEDIA_TYPE} or ${FILE_MEDIA_TYPE_ZSTD}`);
    const count = (field: keyof typeof Annotations) => {
      const v = a[Annotations[field]];
      if (typeof v !== 'string' || !/^(?:0|[1-9][0-9]{0,15})$/.test(v) || !Number.isSafeInteger(Number(v))) refuse(`${at} annotation ${Annotations[field]} ${show(v)} is not a whole number`);
      return Number(v);
    };
    const chunk: PlannedChunk = {
      chunk: count('chunk'),
      digest: d.digest,
      blobSize: d.size,
      offset: count('offset'),
      size: count('size'),
      sha256: String(a[Annotations.sha256]),
      compressed: a[Annotations.compressed] === 'true',
    };
    const fileSize = count('fileSize');
    if (!/^[0-9a-f]{64}$/.test(chunk.sha256) || typeof a[Annotations.sha256] !== 'string') refuse(`${at} annotation ${Annotations.sha256} ${show(a[Annotations.sha256])} is not a sha256`);
    if (a[Annotations.compressed] !== String(d.mediaType === FILE_MEDIA_TYPE_ZSTD)) refuse(`${at} annotation ${Annotations.compressed} ${show(a[Annotations.compressed])} disagrees with its media type ${d.mediaType}`);
    if (chunk.compressed) {
      if (d.size > chunk.size + Math.floor(chunk.size / 64) + 4096) refuse(`${at} size ${d.size} is more than a zstd blob of its ${Annotations.size} ${chunk.size} can be`);
    } else {
      if (d.size !== chunk.size) refuse(`${at} size ${d.size} disagrees with its ${Annotations.size} ${chunk.size}`);
      if (d.digest !== `sha256:${chunk.sha256}`) refuse(`${at} digest ${d.digest} disagrees with its ${Annotations.sha256} ${chunk.sha256}`);
    }
    if (!byFile.has(i)) byFile.set(i, []);
    byFile.get(i)!.push({ chunk, fileSize, at });
  });

  // Each planned file whole: chunks 0..n-1 once each, contiguous, adding up to its size.
  files.forEach((f, i) => {
    if (i === configFile) return;
    const cs = byFile.get(i);
    if (!cs) return refuse(`it holds no blob for the planned ${f} (it holds ${[...byFile.keys()].map((k) => files[k]).join(', ') || 'none'})`);
    cs.sort((x, y) => x.chunk.chunk - y.chunk.chunk);
    const fileSize = cs[0].fileSize;
    let offset = 0;
    cs.forEach(({ chunk, fileSize: fs2, at }, k) => {
      if (chunk.chunk !== k) refuse(`${at} annotation ${Annotations.chunk} ${chunk.chunk}: ${f} needs chunks 0 to ${cs.length - 1}, each once`);
      if (chunk.offset !== offset) refuse(`${at} annotation ${Annotations.offset} ${chunk.offset} is not ${offset}, where chunk ${k} of ${f} starts`);
      if (fs2 !== fileSize) refuse(`${at} annotation ${Annotations.fileSize} ${fs2} disagrees with chunk 0's ${fileSize}`);
      offset += chunk.size;
    });
    if (offset !== fileSize) refuse(`${f}: chunks add up to ${offset} bytes, not its ${Annotations.fileSize} ${fileSize}`);
    entries.push({ file: i, chunks: cs.map((x) => x.chunk) });
    bytes += fileSize;
  });
  if (bytes > maxBytes) refuse(`its files add up to ${bytes} bytes, more than a layer of this configuration holds (${maxBytes})`);
  return { files, entries, bytes };
}

/**
 * Hashes what a writer appends to `fh` from `from` on while `writing` is pending, then the rest:
 * the digest of the bytes as they are in the file. Fails past `max` bytes. `also` (the whole
 * file's hash, across its chunks) sees the same bytes in the same pass.
 */
async function hashAppended(fh: fs.promises.FileHandle, from: number, max: number, writing: Promise<unknown>, what: string, signal: AbortSignal, also?: crypto.Hash): Promise<{ hex: string; bytes: number }> {
  let ended = false;
  writing.then(
    () => (ended = true),
    () => (ended = true),
  );
  const hash = crypto.createHash('sha256');
  const buf = Buffer.allocUnsafe(4 << 20);
  let bytes = 0;
  for (;;) {
    signal.throwIfAborted();
    const last = ended;
    const { bytesRead } = await fh.read(buf, 0, buf.length, from + bytes);
    if (bytesRead) {
      bytes += bytesRead;
      if (bytes > max) throw new RegistryError(`${what} is longer than its ${max} bytes`, 'protocol');
      hash.update(buf.subarray(0, bytesRead));
      also?.update(buf.subarray(0, bytesRead));
    } else if (last) return { hex: hash.digest('hex'), bytes };
    else await sleep(5);
  }
}

/** A planned chunk and the planned file it goes to: its name (for messages) and index (for the temp name). */
interface PullJob extends PlannedChunk {
  file: string;
  fileIndex: number;
}

/** Runs what `fn` starts under one signal: the first part to fail ends the others, and is thrown once they settled. */
async function together<T>(signal: AbortSignal, fn: (sig: AbortSignal, part: <U>(p: Promise<U>) => Promise<U>) => Promise<T>): Promise<T> {
  const ctrl = new AbortController();
  const sig = AbortSignal.any([signal, ctrl.signal]);
  const parts: Promise<unknown>[] = [];
  const part = <U>(p: Promise<U>): Promise<U> => {
    const q = p.catch((err) => (ctrl.abort(err), Promise.reject(err)));
    parts.push(q);
    return q;
  };
  const result = part(fn(sig, part));
  try {
    await Promise.all(parts);
  } catch (err) {
    ctrl.abort(err);
    await Promise.allSettled(parts);
    throw err;
  }
  return result;
}

/**
 * `zstd -d` of `file` appended to `out`, which may not grow past `end` bytes; fails when zstd does.
 * The bound is the kernel's (RLIMIT_FSIZE, through util-linux's prlimit): a blob that unpacks to
 * more than its chunk is stopped at the chunk's end, not once a reader has caught up with it.
 */
function unzstd(file: string, out: number, end: number, what: string, signal: AbortSignal): Promise<void> {
  // --no-sparse: a sparse skip on an O_APPEND descriptor would drop the zeros.
  const zstd = spawn('prlimit', [`--fsize=${end}`, 'zstd', '-q', '-d', '-c', '--no-sparse', '--', file], { stdio: ['ignore', out, 'pipe'], signal });
  let stderr = '';
  zstd.stderr!.on('data', (d) => (stderr += d).length > 4000 && (stderr = stderr.slice(-2000)));
  return new Promise<void>((resolve, reject) => {
    zstd.on('error', reject);
    zstd.on('close', (code, s) =>
      code === 0 ? resolve() : reject(s === 'SIGXFSZ' ? new RegistryError(`${what} unpacks to more than its chunk: refused`, 'protocol') : new Error(`zstd -d of ${what} failed (${code ?? s}): ${stderr.trim().slice(-300)}`)),
    );
  });
}

/**
 * One chunk appended to `out` (O_APPEND, so it lands at its offset: a file's chunks go in order).
 * curl writes the blob and Node hashes the bytes as they land. A compressed blob lands whole in a
 * temp file in `staging` first, and only once its digest holds is it decompressed into `out`, hashed
 * again as it lands. Every check of a streamed pull holds: the blob's digest and size, the
 * uncompressed sha256 and size, each computed from the bytes as written. `whole`, when given, also
 * hashes the uncompressed bytes (the file's sha256, for a file of several chunks).
 */
async function pullChunk(client: OciClient, j: PullJob, out: number, reader: fs.promises.FileHandle, staging: string, signal: AbortSignal, whole?: crypto.Hash): Promise<{ wire: number }> {
  if (fs.fstatSync(out).size !== j.offset) throw new Error(`${j.file}: chunk ${j.chunk} would land at ${fs.fstatSync(out).size}, not ${j.offset}`);
  const what = `${j.file} chunk at ${j.offset}`;
  let blob: { hex: string; bytes: number };
  let raw: { hex: string; bytes: number };
  const refuseBlob = (b: { hex: string; bytes: number }) => {
    if (b.bytes !== j.blobSize || `sha256:${b.hex}` !== j.digest) throw new RegistryError(`blob ${j.digest} of ${j.file} arrived with sha256:${b.hex} (${b.bytes} bytes): refused`, 'protocol');
  };
  if (!j.compressed) {
    blob = raw = await together(signal, (sig, part) => hashAppended(reader, j.offset, j.size, part(client.curlBlob(j.digest, out, sig)), what, sig, whole));
    refuseBlob(blob);
  } else {
    // Named from the plan's own numbers, not from anything the registry sent.
    const tmp = path.join(staging, `.pull-${j.fileIndex}-${j.chunk}.zst`);
    const tmpOut = fs.openSync(tmp, 'wx');
    const tmpIn = await fs.promises.open(tmp, 'r').catch((err) => (fs.closeSync(tmpOut), Promise.reject(err)));
    try {
      blob = await together(signal, (sig, part) => hashAppended(tmpIn, 0, j.blobSize, part(client.curlBlob(j.digest, tmpOut, sig)), `blob ${j.digest}`, sig));
      refuseBlob(blob);
      raw = await together(signal, (sig, part) => hashAppended(reader, j.offset, j.size, part(unzstd(tmp, out, j.offset + j.size, `blob ${j.digest}`, sig)), what, sig, whole));
    } finally {
      fs.closeSync(tmpOut);
      await tmpIn.close();
      fs.rmSync(tmp, { force: true });
    }
  }
  if (raw.bytes !== j.size || raw.hex !== j.sha256) throw new RegistryError(`${what}: uncompressed sha256 ${raw.hex} (${raw.bytes} bytes), expected ${j.sha256}: refused`, 'protocol');
  return { wire: blob.bytes };
}

/**
 * Pulls the artifact tagged from `key` into `staging`: exactly `files`, every blob digest and
 * uncompressed sha256 checked. Files go `concurrency` at a time, the chunks of one file in order.
 * 'miss' when the tag does not exist; throws LayerMismatch when it holds something else, or the
 * transfer's error. `verified` gets the sha256 of every file, computed from its bytes as written
 * (so the caller need not read it again): a single chunk's is the file's, and a file of several
 * chunks is hashed whole in the same pass as its chunks.
 */
export async function pullLayer(
  client: OciClient,
  key: string,
  files: string[],
  staging: string,
  opts: TransferOptions = {},
  verified?: Map<string, string>,
): Promise<{ result: 'restored' | 'miss'; stats: TransferStats }> {
  const started = Date.now();
  const signal = opts.signal ?? new AbortController().signal;
  const stats: TransferStats = { blobs: 0, transferred: 0, skipped: 0, wireBytes: 0, fileBytes: 0, ms: 0 };
  const body = await client.getManifest(tagFor(key), signal);
  if (!body) return { result: 'miss', stats };
  let m: OciManifest;
  try {
    m = JSON.parse(body.toString()) as OciManifest;
  } catch {
    throw new LayerMismatch('its manifest is not JSON');
  }
  // Every check the manifest alone allows is done here, before a byte is fetched or written.
  const plan = planPull(m, key, files, opts.maxBytes ?? Number.MAX_SAFE_INTEGER);
  const perFile = plan.entries.map(({ file: i, chunks }) => {
    const file = plan.files[i];
    return { file, jobs: chunks.map((c): PullJob => ({ ...c, file, fileIndex: i })), bytes: chunks.reduce((n, c) => n + c.blobSize, 0) };
  });
  // Biggest first, so the last to finish are small ones.
  perFile.sort((a, b) => b.bytes - a.bytes);
  await eachLimit(perFile, opts.concurrency ?? 4, signal, async ({ file, jobs }, sig) => {
    const target = plannedPath(staging, plan.files, file);
    const out = fs.openSync(target, 'wx');
    fs.closeSync(out);
    const append = fs.openSync(target, 'a');
    const reader = await fs.promises.open(target, 'r');
    const whole = jobs.length > 1 ? crypto.createHash('sha256') : undefined;
    try {
      for (const j of jobs) {
        const { wire } = await pullChunk(client, j, append, reader, staging, sig, whole);
        stats.blobs++;
        stats.transferred++;
        stats.wireBytes += wire;
        stats.fileBytes += j.size;
      }
    } finally {
      fs.closeSync(append);
      await reader.close();
    }
    // A single chunk's uncompressed sha256, checked against the bytes in the file, is the file's;
    // the chunks of a bigger one went in order, each hashed into `whole` as it landed.
    verified?.set(file, whole ? whole.digest('hex') : jobs[0].sha256);
  });
  stats.ms = Date.now() - started;
  return { result: 'restored', stats };
}

export interface RegistryTierOptions extends Omit<TransferOptions, 'signal'> {
  /** An OCI repository: ghcr.io/OWNER/ryra-vm-layers. */
  repository: string;
  token?: string;
  connectTimeoutMs?: number;
  stallMs?: number;
  logger?: Logger;
}

const mb = (n: number) => (n / 2 ** 20).toFixed(1);

/** The registry tier for `repository`; off for the run after one unreachable or refused call. */
export function registryTier(opts: RegistryTierOptions): RemoteTier & { readonly client: OciClient } {
  const ref = parseRegistryRef(opts.repository);
  const concurrency = opts.concurrency ?? 4;
  const client = new OciClient(ref, { token: opts.token, connectTimeoutMs: opts.connectTimeoutMs, stallMs: opts.stallMs, maxSockets: concurrency + 2 });
  const label = `registry ${ref.host}/${ref.name}`;
  const log = () => opts.logger ?? globalLog;
  if (/[A-Z]/.test(opts.repository)) log().info(`registry ${opts.repository.trim()}: OCI repository names are lowercase, so it is used as ${ref.host}/${ref.name}`);
  // Turning off aborts what is in flight too: one bound paid, not one per call.
  const off = new AbortController();
  const transfer = { ...opts, concurrency, signal: off.signal };
  /** Classifies a failure: the tier goes off on an unreachable or refusing registry. */
  let pushRefused = false;
  const fail = (op: string, key: string, err: unknown): void => {
    if (off.signal.aborted) return;
    if (err instanceof RegistryError && err.kind === 'auth' && op === 'save') {
      // A token that may read but not write (a fork's pull request): pulls go on.
      log().warning(`${label}: ${op} of ${key} failed: ${err.message}; saves to the registry are off for the rest of this run`);
      pushRefused = true;
    } else if (err instanceof RegistryError && (err.kind === 'unreachable' || err.kind === 'auth')) {
      log().warning(`${label}: ${op} of ${key} failed: ${err.message}; the registry tier is off for the rest of this run`);
      off.abort(err);
    } else log().warning(`${label}: ${op} of ${key} failed: ${errorMessage(err)}`);
  };
  // Started while the host is set up: the connection and the pull token (a HEAD of a tag no one
  // pushes), so the first restore does not wait for them. A registry down or refusing the token turns
  // the tier off here, with the one warning; anything else is left to the first real call.
  let warm: Promise<void> | undefined;
  const warmUp = () =>
    client.manifestExists('ryra-vm-warm-up', off.signal, 'pull').then(
      () => undefined,
      (err) => {
        if (err instanceof RegistryError && err.kind !== 'protocol') fail('sign-in', ref.host, err);
      },
    );
  /** Tags whose manifest this run refused (or the caller did): the next save replaces them. */
  const replace = new Set<string>();
  return {
    label,
    client,
    get on() {
      return !off.signal.aborted;
    },
    prestart() {
      warm ??= warmUp();
    },
    refused(key) {
      replace.add(key);
    },
    async restore(key, files, staging, { maxBytes, verified }): Promise<RestoreResult> {
      await warm;
      if (off.signal.aborted) return 'miss';
      try {
        const { result, stats } = await pullLayer(client, key, files, staging, { ...transfer, maxBytes }, verified);
        if (result === 'restored') log().info(`  ${label}: pulled ${key}: ${stats.blobs} blobs, ${mb(stats.wireBytes)} MiB in ${(stats.ms / 1000).toFixed(1)} s`);
        return result;
      } catch (err) {
        for (const f of files.filter(isPlainName)) fs.rmSync(plannedPath(staging, files, f), { force: true });
        verified?.clear();
        fail('restore', key, err);
        if (err instanceof LayerMismatch) replace.add(key);
        // Off (down, stalled, refused) or not our artifact: a miss; a bad blob: worth one more try.
        return err instanceof LayerMismatch || off.signal.aborted ? 'miss' : 'failed';
      }
    },
    async has(key) {
      await warm;
      if (off.signal.aborted) return undefined;
      if (replace.has(key)) return false;
      try {
        return await client.manifestExists(tagFor(key), off.signal, 'pull');
      } catch (err) {
        fail('lookup', key, err);
        return undefined;
      }
    },
    async save(key, files, dir): Promise<SaveResult> {
      await warm;
      if (off.signal.aborted || pushRefused) return 'failed';
      try {
        // A tag is mutable: a refused one is pushed over (a later run then restores the rebuilt layer).
        if (replace.has(key)) log().info(`  ${label}: ${key} holds a refused entry; pushing the rebuilt layer over it`);
        else if (await client.manifestExists(tagFor(key), off.signal, 'pull,push')) return 'exists';
        const stats = await pushLayer(client, key, files, dir, transfer);
        log().info(`  ${label}: pushed ${key}: ${stats.transferred} of ${stats.blobs} blobs sent (${stats.skipped} there already), ${mb(stats.wireBytes)} MiB in ${(stats.ms / 1000).toFixed(1)} s`);
        return 'saved';
      } catch (err) {
        fail('save', key, err);
        return 'failed';
      }
    },
    close: () => client.close(),
  };
}

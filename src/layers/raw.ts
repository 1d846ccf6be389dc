// The raw layer: the cloud image, downloaded (or copied from file:// or a path) to a temp name,
// hashed while it streams, compared with the published or given digest, then renamed into place.
// Downloads go through the toolkit's HTTP client, which honours the runner's http(s)_proxy and
// no_proxy (Node's fetch does not), with a socket idle bound and an overall bound.
import { HttpClient } from '@actions/http-client';
import { digester, fileDigests } from '../cache/manifest.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { ChecksumFormat, DistroImage } from '../distro.js';
import type { Checksum, ChecksumAlgorithm } from '../inputs.js';
import { errorMessage, log } from '../log.js';
import { retry, withTimeout } from '../util/time.js';

/** A download whose connection sends nothing for this long is abandoned (and retried). */
const IDLE_MS = 60_000;
/** No image download may take longer than this in all. */
const DOWNLOAD_MS = 60 * 60_000;

export class ChecksumMismatchError extends Error {
  override name = 'ChecksumMismatchError';
}

/** Finds `file`'s digest in a Debian SHA512SUMS (`HEX  name`) or Fedora CHECKSUM (`SHA256 (name) = HEX`); any of them when no format is given. */
export function parseChecksumFile(text: string, format: ChecksumFormat | undefined, file: string): Checksum | undefined {
  if (format === undefined) {
    for (const f of ['sha512sums', 'sha256sums', 'fedora-checksum'] as const) {
      const found = parseChecksumFile(text, f, file);
      if (found) return found;
    }
    return undefined;
  }
  for (const line of text.split('\n')) {
    if (format === 'sha512sums' || format === 'sha256sums') {
      // `HEX  name` or `HEX *name` (binary mode, as Ubuntu's SHA256SUMS writes it).
      const [algorithm, length] = format === 'sha512sums' ? (['sha512', 128] as const) : (['sha256', 64] as const);
      const m = /^([0-9a-fA-F]+)\s+\*?(\S+)$/.exec(line.trim());
      if (m && m[1].length === length && path.basename(m[2]) === file) return { algorithm, hex: m[1].toLowerCase() };
    } else {
      const m = /^(SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]+)$/.exec(line.trim());
      if (m && m[2] === file) return { algorithm: m[1].toLowerCase() as ChecksumAlgorithm, hex: m[3].toLowerCase() };
    }
  }
  return undefined;
}

function isRemote(url: string): boolean {
  return /^https?:\/\//i.test(url);
}

function localPath(url: string): string {
  return url.startsWith('file://') ? fileURLToPath(url) : url;
}

function client(idleMs = IDLE_MS): HttpClient {
  return new HttpClient('ryra-vm-action', [], { socketTimeout: idleMs, allowRetries: false, keepAlive: false });
}

async function openSource(url: string): Promise<{ stream: Readable; total?: number; close: () => void }> {
  if (!isRemote(url)) {
    const p = localPath(url);
    const stream = fs.createReadStream(p);
    return { stream, total: fs.statSync(p).size, close: () => stream.destroy() };
  }
  const c = client();
  const res = await withTimeout(c.get(url), IDLE_MS, `connecting to ${url}`);
  const status = res.message.statusCode ?? 0;
  if (status !== 200) {
    res.message.resume();
    c.dispose();
    throw new Error(`HTTP ${status} ${res.message.statusMessage ?? ''} for ${url}`.trim());
  }
  const len = Number(res.message.headers['content-length']);
  return { stream: res.message, total: len > 0 ? len : undefined, close: () => (res.message.destroy(), c.dispose()) };
}

/** A checksum file is a few KiB; more is not one. */
const CHECKSUM_FILE_MAX_BYTES = 1 << 20;

async function readText(url: string, boundMs = IDLE_MS): Promise<string> {
  if (!isRemote(url)) {
    const p = localPath(url);
    if (fs.statSync(p).size > CHECKSUM_FILE_MAX_BYTES) throw new Error(`${url} is larger than a checksum file (over 1 MiB)`);
    return fs.readFileSync(p, 'utf8');
  }
  const c = client(boundMs);
  try {
    const res = await withTimeout(c.get(url), boundMs, `fetching ${url}`, () => c.dispose());
    if (res.message.statusCode !== 200) {
      res.message.destroy();
      throw new Error(`HTTP ${res.message.statusCode} ${res.message.statusMessage ?? ''} for ${url}`);
    }
    // Read up to the cap, whatever Content-Length says (a chunked body has none).
    const read = async () => {
      const chunks: Buffer[] = [];
      let n = 0;
      for await (const chunk of res.message) {
        n += (chunk as Buffer).length;
        if (n > CHECKSUM_FILE_MAX_BYTES) throw new Error(`${url} is larger than a checksum file (over 1 MiB)`);
        chunks.push(chunk as Buffer);
      }
      return Buffer.concat(chunks).toString('utf8');
    };
    return await withTimeout(read(), boundMs, `reading ${url}`, () => res.message.destroy());
  } finally {
    c.dispose();
  }
}

/** Where an image's digest is published: the file, how to read it (undefined: any known form) and the image's name in it. */
export interface PublishedChecksum {
  url: string;
  format?: ChecksumFormat;
  file: string;
}

/** The catalogue image's checksum file, or the one `image-checksum-url` names for a custom image. */
export function publishedChecksum(image: DistroImage, imageUrl: string | undefined, checksumUrl: string | undefined): PublishedChecksum | undefined {
  if (imageUrl === undefined) return { url: image.checksumUrl, format: image.checksumFormat, file: path.basename(new URL(image.url).pathname) };
  if (checksumUrl === undefined) return undefined;
  return { url: checksumUrl, file: path.basename(isRemote(imageUrl) || imageUrl.startsWith('file://') ? new URL(imageUrl).pathname : imageUrl) };
}

/** The per-run read of a checksum file is small; one slow mirror must not hold a run for minutes. */
export const CHECKSUM_FETCH_MS = 15_000;

/**
 * The digest the publisher lists now: fetched each run (two attempts, each bounded), so a
 * republished image gives new layers everywhere. The layers are keyed by what it returns.
 */
export async function publishedDigest(src: PublishedChecksum, boundMs = CHECKSUM_FETCH_MS): Promise<Checksum> {
  const text = await retry(() => readText(src.url, boundMs), { attempts: 2, delayMs: () => 1000 });
  const found = parseChecksumFile(text, src.format, src.file);
  if (!found) throw new Error(`${src.url} lists no digest for ${src.file}`);
  return found;
}

function withRetries<T>(what: string, fn: () => Promise<T>, attempts = 4): Promise<T> {
  return retry(fn, {
    attempts,
    delayMs: (i) => 2 ** i * 1000,
    retryable: (err) => !(err instanceof ChecksumMismatchError),
    onRetry: (err, i, wait) => log.warning(`${what}: ${errorMessage(err)}; retrying in ${wait / 1000} s (attempt ${i + 1} of ${attempts})`),
  });
}

function mb(n: number): string {
  return (n / 1048576).toFixed(1);
}

/**
 * Streams `url` into `dest` through `partial`, hashing on the way; renames only when the digest
 * matches. A mismatch deletes the partial file and names both digests.
 */
/** Downloads `url` to `dest` verifying `expected` while streaming; also returns the sha256 manifests record. */
export async function download(url: string, dest: string, partial: string, expected: Checksum, progressEveryMs = 5000): Promise<{ bytes: number; sha256: string }> {
  return withRetries(`download ${url}`, async () => {
    const { stream, total, close } = await openSource(url);
    const hash = digester([expected.algorithm, 'sha256']);
    const out = fs.createWriteStream(partial);
    const start = Date.now();
    let bytes = 0;
    let lastReport = start;
    // The overall bound: past it the stream is destroyed, which ends the loop below with an error.
    const bound = setTimeout(() => stream.destroy(new Error(`the download took longer than ${DOWNLOAD_MS / 60_000} min`)), DOWNLOAD_MS);
    try {
      for await (const chunk of stream) {
        const buf = chunk as Buffer;
        hash.update(buf);
        bytes += buf.length;
        if (!out.write(buf)) await new Promise<void>((r) => out.once('drain', () => r()));
        const now = Date.now();
        if (now - lastReport >= progressEveryMs) {
          lastReport = now;
          const rate = bytes / 1048576 / ((now - start) / 1000);
          log.info(`  ${total ? `${Math.floor((bytes / total) * 100)}% ` : ''}${mb(bytes)}${total ? `/${mb(total)}` : ''} MB at ${rate.toFixed(1)} MB/s`);
        }
      }
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    } catch (err) {
      out.destroy();
      fs.rmSync(partial, { force: true });
      throw err;
    } finally {
      clearTimeout(bound);
      close();
    }
    const digests = hash.hex();
    const actual = digests[expected.algorithm];
    if (actual !== expected.hex) {
      fs.rmSync(partial, { force: true });
      throw new ChecksumMismatchError(
        `checksum mismatch for ${url}: expected ${expected.algorithm}:${expected.hex}, got ${expected.algorithm}:${actual} (the file was deleted)`,
      );
    }
    fs.renameSync(partial, dest);
    const secs = (Date.now() - start) / 1000;
    log.info(`  ${mb(bytes)} MB in ${secs.toFixed(1)} s, ${expected.algorithm} verified`);
    return { bytes, sha256: digests.sha256 };
  });
}

/**
 * An image left under the raw layer's name with no manifest (the Rust tool kept none): its
 * digests when it is the published image, else undefined (it is downloaded afresh).
 */
export async function adoptRaw(file: string, expected: Checksum): Promise<{ sha256: string } | undefined> {
  log.info(`${path.basename(file)} has no manifest: checking its ${expected.algorithm} before using it`);
  const d = await fileDigests(file, [expected.algorithm, 'sha256']);
  if (d[expected.algorithm] === expected.hex) return { sha256: d.sha256 };
  log.info(`  it is not the published image (${expected.algorithm}:${d[expected.algorithm].slice(0, 16)}…): downloading afresh`);
  return undefined;
}

// The raw layer: the cloud image, downloaded (or copied from file:// or a path) to a temp name,
// hashed while it streams, compared with the published or given digest, then renamed into place.
import { digester } from './manifest.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { ChecksumFormat, DistroImage } from '../distro.js';
import type { Checksum, ChecksumAlgorithm } from '../inputs.js';
import { errorMessage, log } from '../log.js';

export class ChecksumMismatchError extends Error {
  override name = 'ChecksumMismatchError';
}

/** Finds `file`'s digest in a Debian SHA512SUMS (`HEX  name`) or Fedora CHECKSUM (`SHA256 (name) = HEX`). */
export function parseChecksumFile(text: string, format: ChecksumFormat, file: string): Checksum | undefined {
  for (const line of text.split('\n')) {
    if (format === 'sha512sums') {
      const m = /^([0-9a-fA-F]{128})\s+\*?(\S+)$/.exec(line.trim());
      if (m && path.basename(m[2]) === file) return { algorithm: 'sha512', hex: m[1].toLowerCase() };
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

async function openSource(url: string): Promise<{ stream: Readable; total?: number }> {
  if (!isRemote(url)) {
    const p = localPath(url);
    return { stream: fs.createReadStream(p), total: fs.statSync(p).size };
  }
  const res = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(60 * 60_000) });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status} ${res.statusText} for ${url}`);
  const len = Number(res.headers.get('content-length'));
  return { stream: Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), total: len > 0 ? len : undefined };
}

async function readText(url: string): Promise<string> {
  if (!isRemote(url)) return fs.readFileSync(localPath(url), 'utf8');
  const res = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(60_000) });
  if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText} for ${url}`);
  return res.text();
}

/** The digest to verify against: the given one, else the distro's published checksum file. */
export async function expectedChecksum(image: DistroImage, given: Checksum | undefined): Promise<Checksum> {
  if (given) return given;
  const text = await withRetries(`checksum file ${image.checksumUrl}`, () => readText(image.checksumUrl));
  const name = path.basename(new URL(image.url).pathname);
  const found = parseChecksumFile(text, image.checksumFormat, name);
  if (!found) throw new Error(`${image.checksumUrl} lists no digest for ${name}`);
  return found;
}

async function withRetries<T>(what: string, fn: () => Promise<T>, attempts = 4): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (i >= attempts || err instanceof ChecksumMismatchError) throw err;
      const wait = 2 ** i * 1000;
      log.warning(`${what}: ${errorMessage(err)}; retrying in ${wait / 1000} s (attempt ${i + 1} of ${attempts})`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
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
    const { stream, total } = await openSource(url);
    const hash = digester([expected.algorithm, 'sha256']);
    const out = fs.createWriteStream(partial);
    const start = Date.now();
    let bytes = 0;
    let lastReport = start;
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

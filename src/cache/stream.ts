// A restore as one stream, `curl | zstd -d | tar -x`, for cache services whose download URLs are
// not Azure blob storage (self-hosted cache servers, the tests' service). Written by hand because
// there the toolkit reads the whole archive through Node's HTTP client into a file (~230 MB/s on a
// 2-core runner, where curl reads the same service at 560 MB/s, the service's own limit) and only
// then starts tar: together 3-6x a plain `zstd -d | tar x`. The lookup uses the toolkit's own client and entry version, and tar gets the
// toolkit's arguments, so entries move freely between this path and the toolkit's. Azure URLs
// (github.com's service) keep the toolkit's download: ranged and parallel through the Azure SDK.
// Runs in the cache worker, so the worker's kill on a timeout bounds it too.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { getHooks } from '../env.js';
// The toolkit exports no lookup that returns the download URL; these are its own modules, pinned
// by package-lock (a layout change fails the build, not a run).
import { getCacheMode, getCacheServiceVersion, isCacheReadable } from '../../node_modules/@actions/cache/lib/internal/config.js';
import { internalCacheTwirpClient } from '../../node_modules/@actions/cache/lib/internal/shared/cacheTwirpClient.js';
import { getCacheVersion, getCompressionMethod } from '../../node_modules/@actions/cache/lib/internal/cacheUtils.js';

/** The toolkit's choice (zstd if it runs, else gzip), asked once per worker: each ask starts zstd. */
let method: ReturnType<typeof getCompressionMethod> | undefined;
const compressionMethod = () => (method ??= getCompressionMethod());

/** The streamed path applies: v2 service, readable, zstd archives, curl and GNU tar on PATH. */
export async function canStream(env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  if (getHooks().toolkitRestore) return false;
  if (getCacheServiceVersion() !== 'v2' || !isCacheReadable(getCacheMode())) return false;
  if (!String(await compressionMethod().catch(() => '')).startsWith('zstd')) return false;
  return ['curl', 'tar'].every((c) => onPath(c, env)) && process.platform === 'linux';
}

function onPath(cmd: string, env: NodeJS.ProcessEnv): boolean {
  return (env.PATH ?? '').split(path.delimiter).some((d) => d && fs.existsSync(path.join(d, cmd)));
}

export function isAzureBlobUrl(url: string): boolean {
  return new URL(url).hostname.endsWith('.blob.core.windows.net');
}

/** What a lookup found; the restore that follows uses it (a signed URL is valid for minutes). */
interface Found {
  at: number;
  matchedKey: string;
  url: string;
}
const found = new Map<string, Found>();
const FRESH_MS = 60_000;

const entryVersion = async (paths: string[]) => getCacheVersion(paths, await compressionMethod());

/** The toolkit's own lookup request: the entry, null on a miss, undefined when the request failed. */
async function ask(key: string, version: string): Promise<Found | null | undefined> {
  try {
    const res = await internalCacheTwirpClient().GetCacheEntryDownloadURL({ key, restoreKeys: [], version });
    return res.ok && res.signedDownloadUrl ? { at: Date.now(), matchedKey: res.matchedKey, url: res.signedDownloadUrl } : null;
  } catch {
    return undefined;
  }
}

/**
 * Looks `key` (exact) up the way the toolkit does, and keeps the download URL for the restore that
 * follows (one lookup a layer, not two). Returns the matched key, null on a miss, or undefined when
 * the lookup failed (the toolkit then asks again and reports the failure its own way: 429s, denied
 * reads).
 */
export async function streamedLookup(paths: string[], key: string): Promise<string | null | undefined> {
  const version = await entryVersion(paths);
  const entry = await ask(key, version);
  if (entry) found.set(`${key}\0${version}`, entry);
  return entry ? entry.matchedKey : entry;
}

/**
 * Restores `key` (exact) for `paths` into `dir`, with the URL a lookup just found or from a new
 * lookup. Returns the matched key, null on a miss, or undefined when the toolkit should do it: the
 * entry lives in Azure blob storage, or the lookup failed. Throws when the transfer or the
 * extraction fails; `dir` may then hold part of the files.
 */
export async function streamedRestore(paths: string[], key: string, dir: string, log: (line: string) => void): Promise<string | null | undefined> {
  const version = await entryVersion(paths);
  const kept = found.get(`${key}\0${version}`);
  found.delete(`${key}\0${version}`);
  const entry = kept && Date.now() - kept.at <= FRESH_MS ? kept : await ask(key, version);
  if (!entry) return entry;
  if (isAzureBlobUrl(entry.url)) return undefined;
  log(`Cache hit for: ${entry.matchedKey} (streamed: curl | zstd -d | tar -x)`);
  const bytes = await curlZstdTar(entry.url, dir);
  log(`Cache Size: ~${Math.round(bytes / (1024 * 1024))} MB (${bytes} B)`);
  return entry.matchedKey;
}

/** Downloads `url` into zstd and tar at once; resolves with the bytes downloaded. */
async function curlZstdTar(url: string, dir: string): Promise<number> {
  // The signed URL goes in on curl's stdin (`-K -`), not on its command line, where any process
  // on the host could read it. A service silent for 15 s counts as stalled (the toolkit's own plain
  // download gives up after 5 s of silence).
  const curl = spawn('curl', ['-K', '-', '--fail', '--silent', '--show-error', '--location', '--connect-timeout', '30', '--speed-limit', '1', '--speed-time', '15', '--write-out', '%{stderr}ryra-bytes=%{size_download}\n'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  curl.stdin!.end(`url = "${url.replace(/["\\]/g, (c) => `\\${c}`)}"\n`);
  const zstd = spawn('zstd', ['-d', '-c', '-q'], { stdio: [curl.stdout!, 'pipe', 'pipe'] });
  const tar = spawn('tar', ['-xf', '-', '-P', '-C', dir], { stdio: [zstd.stdout!, 'ignore', 'pipe'] });
  // spawn has handed each pipe to its reader: the parent's copies are closed, so a reader that dies
  // makes its writer fail (EPIPE) instead of blocking, and no byte is read here.
  curl.stdout!.destroy();
  zstd.stdout!.destroy();
  const procs: [string, ChildProcess][] = [
    ['curl', curl],
    ['zstd -d', zstd],
    ['tar -x', tar],
  ];
  const stderr = new Map<ChildProcess, string>();
  for (const [, p] of procs) p.stderr!.setEncoding('utf8').on('data', (d: string) => stderr.set(p, (stderr.get(p) ?? '') + d));
  // A failure travels down the pipes by itself (EOF, EPIPE); whatever still runs 2 s after the
  // first failure is killed. The one that failed on its own is the one reported.
  let reaper: NodeJS.Timeout | undefined;
  const reap = () =>
    (reaper ??= setTimeout(() => {
      for (const [, p] of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }, 2000));
  const results = await Promise.all(
    procs.map(
      ([name, p]) =>
        new Promise<{ name: string; p: ChildProcess; code: number | null; error?: Error }>((resolve) => {
          p.once('error', (error) => {
            reap();
            resolve({ name, p, code: null, error });
          });
          p.once('close', (code) => {
            if (code !== 0) reap();
            resolve({ name, p, code });
          });
        }),
    ),
  );
  clearTimeout(reaper);
  const curlErr = stderr.get(curl) ?? '';
  const bytes = Number(/ryra-bytes=(\d+)/.exec(curlErr)?.[1] ?? 0);
  // In pipeline order, a process that exited with an error of its own comes before one killed here.
  const failed = results.find((r) => r.error || (r.code !== null && r.code !== 0)) ?? results.find((r) => r.code !== 0);
  if (failed) {
    const own = failed.error?.message ?? (stderr.get(failed.p) ?? '').replace(/ryra-bytes=\d+\n?/, '').trim();
    throw new Error(`${failed.name} ${failed.error ? 'could not start' : `exited with ${failed.code ?? failed.p.signalCode}`}${own ? `: ${own.split('\n').slice(-2).join(' ')}` : ''} (after ${bytes} bytes downloaded)`);
  }
  return bytes;
}

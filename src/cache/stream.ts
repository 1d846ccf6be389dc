// Lookups and restores of Actions cache entries, done here and not by the toolkit, for two reasons:
// - the toolkit extracts with `tar -P` into the workspace, so an entry holding an absolute name,
//   `..` or a symlink followed by a write lands anywhere the runner user can write; here tar runs
//   without -P into a private staging dir, unpacks only the layer's planned names (so no other
//   member, directory or link is ever made), keeps no owner, mode bits or existing file, and its
//   complaints refuse the entry (the caller then checks what is left: cache/confine.ts);
// - the toolkit exports no lookup that returns the download URL, and on non-Azure hosts it reads
//   the whole archive into a file before tar starts (3-6x a plain `zstd -d | tar x` here).
// So the lookup is the service's own small protocol (v2 Twirp or v1 REST, as the notes describe it),
// with the toolkit's entry version (paths, compression method, salt), and the download is one
// stream, `curl | zstd -d | tar -x`, for every URL (Azure's signed URLs are plain GETs too). Saves
// stay with the toolkit's public saveCache. Runs in the cache worker, whose kill bounds it too.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { isPlainName } from './confine.js';

export type CompressionMethod = 'zstd-without-long' | 'gzip';

/** The toolkit's choice: zstd when it runs, else gzip. Asked once per worker (each ask starts zstd). */
let method: CompressionMethod | undefined;
export function compressionMethod(): CompressionMethod {
  return (method ??= spawnSync('zstd', ['--quiet', '--version'], { encoding: 'utf8' }).stdout?.trim() ? 'zstd-without-long' : 'gzip');
}

/** The toolkit's entry version: the path strings, the compression method and its salt. */
export function entryVersion(paths: string[], m: CompressionMethod = compressionMethod()): string {
  return createHash('sha256').update([...paths, m, '1.0'].join('|')).digest('hex');
}

export interface Service {
  protocol: 'v1' | 'v2';
  /** Base URL, ending in '/'. */
  url: string;
  token: string;
}

/** The cache service this job has, as the toolkit would pick it; undefined when none or not readable. */
export function cacheService(env: NodeJS.ProcessEnv = process.env): Service | undefined {
  const host = new URL(env.GITHUB_SERVER_URL || 'https://github.com').hostname.toUpperCase();
  const ghes = host !== 'GITHUB.COM' && !host.endsWith('.GHE.COM') && !host.endsWith('.LOCALHOST');
  const protocol = !ghes && env.ACTIONS_CACHE_SERVICE_V2 && env.ACTIONS_CACHE_SERVICE_V2 !== 'false' ? 'v2' : 'v1';
  const url = protocol === 'v2' ? env.ACTIONS_RESULTS_URL : env.ACTIONS_CACHE_URL || env.ACTIONS_RESULTS_URL;
  const mode = (env.ACTIONS_CACHE_MODE ?? '').trim().toLowerCase();
  if (!url || !env.ACTIONS_RUNTIME_TOKEN || mode === 'none' || mode === 'write-only') return undefined;
  return { protocol, url: url.endsWith('/') ? url : `${url}/`, token: env.ACTIONS_RUNTIME_TOKEN };
}

/** An entry a lookup found. */
export interface Found {
  matchedKey: string;
  url: string;
}

export class RateLimited extends Error {
  constructor(readonly retryAfterS: number) {
    super(`rate limited (429); the limit resets in ${retryAfterS} s`);
  }
}

/**
 * Looks up the first of `keys` the service has for `version` (each key exact, then as a prefix,
 * newest first: the service's order). Null on a miss; throws on a failure (RateLimited on a 429).
 * 5xx and network errors are tried three times; the worker's timeout bounds the whole call.
 */
export async function lookupEntry(s: Service, keys: string[], version: string): Promise<Found | null> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await lookupOnce(s, keys, version);
    } catch (err) {
      const retry = !(err instanceof RateLimited) && !(err instanceof HttpStatus && err.status < 500);
      if (!retry || attempt === 3) throw err;
      await new Promise((r) => setTimeout(r, attempt * 1000));
    }
  }
}

class HttpStatus extends Error {
  constructor(
    readonly status: number,
    body: string,
  ) {
    super(`HTTP ${status}${body ? `: ${body.slice(0, 200)}` : ''}`);
  }
}

async function lookupOnce(s: Service, keys: string[], version: string): Promise<Found | null> {
  const auth = { Authorization: `Bearer ${s.token}` };
  const res =
    s.protocol === 'v2'
      ? await fetch(`${s.url}twirp/github.actions.results.api.v1.CacheService/GetCacheEntryDownloadURL`, {
          method: 'POST',
          headers: { ...auth, 'Content-Type': 'application/json', Accept: 'application/json' },
          body: JSON.stringify({ key: keys[0], restore_keys: keys.slice(1), version }),
        })
      : await fetch(`${s.url}_apis/artifactcache/cache?keys=${encodeURIComponent(keys.join(','))}&version=${version}`, {
          headers: { ...auth, Accept: 'application/json;api-version=6.0-preview.1' },
        });
  const text = await res.text();
  if (res.status === 429) throw new RateLimited(Number(res.headers.get('retry-after')) || 1);
  if (s.protocol === 'v1' && res.status === 204) return null;
  if (!res.ok) throw new HttpStatus(res.status, text);
  const j = JSON.parse(text) as { ok?: boolean; signed_download_url?: string; matched_key?: string; cacheKey?: string; archiveLocation?: string };
  if (s.protocol === 'v2') return j.ok && j.signed_download_url && j.matched_key ? { matchedKey: j.matched_key, url: j.signed_download_url } : null;
  return j.archiveLocation && j.cacheKey ? { matchedKey: j.cacheKey, url: j.archiveLocation } : null;
}

/** The entry's archive could not be read whole (worth one more try). */
export class TransferError extends Error {}
/** The archive arrived whole, but tar refused part of it: an entry not to use. */
export class RefusedError extends Error {}

/** What tar says (on stderr) once it has read more of the archive than may be unpacked. */
const OVER_LIMIT = 'ryra-over-limit';

/**
 * Downloads `url` into the decompressor and tar at once, extracting into `dir` (an empty private
 * staging dir) the members named `names` (plain file names) and nothing else, at most `maxBytes`
 * of archive (past that it is refused); resolves with the bytes downloaded. A name the archive
 * lacks refuses it.
 */
export async function curlExtract(url: string, dir: string, names: string[], maxBytes: number, m: CompressionMethod = compressionMethod()): Promise<number> {
  const bad = names.find((n) => !isPlainName(n));
  if (bad !== undefined || !names.length) throw new Error(`cannot restore ${bad === undefined ? 'no files' : JSON.stringify(bad)}: a restore takes plain file names (letters, digits, '.', '_', '+', '-')`);
  // The signed URL goes in on curl's stdin (`-K -`), not on its command line, where any process
  // on the host could read it. A service silent for 15 s counts as stalled (the toolkit's own plain
  // download gives up after 5 s of silence).
  const curl = spawn('curl', ['-K', '-', '--fail', '--silent', '--show-error', '--location', '--connect-timeout', '30', '--speed-limit', '1', '--speed-time', '15', '--write-out', '%{stderr}ryra-bytes=%{size_download}\n'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  curl.stdin!.end(`url = "${url.replace(/["\\]/g, (c) => `\\${c}`)}"\n`);
  const unzip = spawn(m === 'gzip' ? 'gzip' : 'zstd', m === 'gzip' ? ['-d', '-c'] : ['-d', '-c', '-q'], { stdio: [curl.stdout!, 'pipe', 'pipe'] });
  // No -P (absolute names lose their `/`, names with `..` are skipped and reported), no owner or
  // mode bits from the archive, no existing file replaced (a second member cannot write through a
  // symlink the first one made), symlinks that point out are made last (tar's placeholders).
  // The bound on what it writes: tar counts the 10 KiB records it reads (reblocking a pipe's short
  // reads), and its checkpoint N fires once N - 1 records are in, so checkpoint floor(max/10240) + 2
  // fires once more than `maxBytes` of archive has been read (what tar writes is no more, but for
  // sparse members, whose claimed sizes the caller checks before reading them); the pipeline is
  // then killed. No byte passes through Node, and no process is added to the pipe.
  const bound = [`--checkpoint=${Math.floor(maxBytes / 10240) + 2}`, `--checkpoint-action=echo=${OVER_LIMIT}`];
  // Only the planned names, after `--`: tar reads every other member's header and data and drops
  // them, so no directory, link or extra member is made whatever its name (an absolute or `..` name
  // never equals a plain one). --no-recursion: a planned name that is a directory in the archive
  // brings none of what is under it; --no-wildcards: a name matches only itself. The bound on
  // members: tar makes at most one inode per planned name, since a second member of that name meets
  // --keep-old-files, and -v lists each member it unpacks, so one more than the planned count stops
  // the pipeline at once; a skipped member makes none and costs 512 bytes of archive or more, which
  // the byte bound counts. tar reads to the archive's end (no --occurrence): zstd checks the whole
  // frame, a planned name twice is refused rather than ignored, and curl and zstd end on their own
  // (a reader that stopped early would fail them with EPIPE, which reads as a broken transfer).
  // tar speaks English (LC_ALL=C): its messages are matched below.
  const only = ['--no-recursion', '--no-wildcards', '-v', '--', ...names];
  const tar = spawn('tar', ['-x', '-f', '-', '-C', dir, '--no-same-owner', '--no-same-permissions', '--keep-old-files', ...bound, ...only], { stdio: [unzip.stdout!, 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
  // spawn has handed each pipe to its reader: the parent's copies are closed, so a reader that dies
  // makes its writer fail (EPIPE) instead of blocking, and no byte is read here.
  curl.stdout!.destroy();
  unzip.stdout!.destroy();
  const procs: [string, ChildProcess][] = [
    ['curl', curl],
    [`${m === 'gzip' ? 'gzip' : 'zstd'} -d`, unzip],
    ['tar -x', tar],
  ];
  const stderr = new Map<ChildProcess, string>();
  let over = false;
  let unpacked = 0;
  let twice = false;
  tar.stdout!.setEncoding('utf8').on('data', (d: string) => {
    for (const c of d) if (c === '\n') unpacked++;
    if (unpacked > names.length && !over && !twice) {
      twice = true;
      for (const [, q] of procs) q.kill('SIGKILL');
    }
  });
  for (const [, p] of procs) {
    p.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr.set(p, (stderr.get(p) ?? '') + d);
      if (p === tar && !over && stderr.get(p)!.includes(OVER_LIMIT)) {
        over = true;
        for (const [, q] of procs) q.kill('SIGKILL');
      }
    });
  }
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
  const own = (r: (typeof results)[number]) => r.error?.message ?? (stderr.get(r.p) ?? '').replace(/ryra-bytes=\d+\n?/, '').trim();
  if (over) throw new RefusedError(`it unpacks to more than ${maxBytes} bytes, more than a layer of this configuration holds (stopped after ${bytes} bytes downloaded)`);
  if (twice) throw new RefusedError(`it holds more than the ${names.length} members named as the layer's files (${names.join(', ')}): a name twice`);
  // In pipeline order, a process that exited with an error of its own comes before one killed here.
  const failed = results.find((r) => r.error || (r.code !== null && r.code !== 0)) ?? results.find((r) => r.code !== 0);
  if (failed) {
    const text = own(failed);
    const message = `${failed.name} ${failed.error ? 'could not start' : `exited with ${failed.code ?? failed.p.signalCode}`}${text ? `: ${text.split('\n').slice(-2).join(' ')}` : ''} (after ${bytes} bytes downloaded)`;
    // Only tar failed, on a stream that arrived whole: the archive itself is refused.
    const lacks = [...text.matchAll(/^tar: (.*): Not found in archive$/gm)].map((x) => x[1]);
    if (failed.p === tar && lacks.length) throw new RefusedError(`it lacks ${lacks.join(', ')} (of the files ${names.join(', ')})`);
    throw failed.p === tar ? new RefusedError(`tar refused it: ${text.split('\n').filter(Boolean).slice(0, 3).join('; ')}`) : new TransferError(message);
  }
  // tar strips a leading `/` or `../` (of a hard link's target: a planned name is plain) with only a
  // warning: such a name is refused all the same.
  const warned = own(results[2]);
  if (/Removing leading|contains '\.\.'/.test(warned)) throw new RefusedError(`tar refused it: ${warned.split('\n').filter(Boolean).slice(0, 3).join('; ')}`);
  return bytes;
}

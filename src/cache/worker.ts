// The Actions cache calls of one run, in one long-lived process: `node cache-worker.js`. Requests
// come as JSON lines on stdin, one at a time; each result goes as a JSON line on fd 3; the toolkit's
// own log lines go to stdout as usual. Lookups and restores are this project's own (stream.ts);
// saves are the toolkit's saveCache, which resolves paths against the cwd and GITHUB_WORKSPACE, so
// each call gets its own directory as both. A stalled call is ended by killing this process.
import * as cache from '@actions/cache';
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { RateLimited, RefusedError, cacheService, compressionMethod, curlExtract, entryVersion, lookupEntry, type Found } from './stream.js';

export interface WorkerRequest {
  id: number;
  op: 'lookup' | 'restore' | 'save';
  /** Directory the `paths` are relative to; it becomes cwd and GITHUB_WORKSPACE. */
  dir: string;
  paths: string[];
  /** save: the key; lookup/restore: the keys to try, in the service's order (first found wins). */
  key: string;
  keys?: string[];
  /** restore: the most bytes the archive may unpack to. */
  maxBytes?: number;
}

export interface WorkerResult {
  id: number;
  /** lookup/restore: the matched key, or null on a miss. */
  matchedKey?: string | null;
  /** save: the entry id, or -1. */
  entryId?: number;
  error?: string;
  /** The service answered 429: seconds until its limit resets. */
  rateLimitedS?: number;
  /** restore: the archive arrived but was refused (why). */
  refused?: string;
  /** Sent once, as id 0, when the toolkit is loaded and requests are read. */
  ready?: boolean;
}

// Layers are qcow2 files compressed already: zstd's level barely changes their size (measured: 1%
// of 200 MiB at level 3, the same at 1) but level 1 takes half the time. The toolkit's tar runs
// zstd without a level, so zstd takes this one.
process.env.ZSTD_CLEVEL ??= '1';

// Asked at once: the answer starts zstd, and the worker starts while the host is set up.
compressionMethod();

/** What a lookup found, kept for the restore that follows (one lookup a layer; a signed URL lasts minutes). */
const found = new Map<string, Found & { at: number }>();
const FRESH_MS = 60_000;

async function lookup(req: WorkerRequest): Promise<Found | null> {
  const service = cacheService();
  if (!service) return null;
  const version = entryVersion(req.paths);
  const id = `${(req.keys ?? [req.key]).join(',')}\0${version}`;
  const kept = found.get(id);
  found.delete(id);
  if (req.op === 'restore' && kept && Date.now() - kept.at <= FRESH_MS) return kept;
  const f = await lookupEntry(service, req.keys ?? [req.key], version);
  if (f && req.op === 'lookup') found.set(id, { ...f, at: Date.now() });
  return f;
}

const done = (r: WorkerResult) => fs.writeSync(3, JSON.stringify(r) + '\n');
done({ id: 0, ready: true });
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const req = JSON.parse(line) as WorkerRequest;
  try {
    process.chdir(req.dir);
    process.env.GITHUB_WORKSPACE = req.dir;
    if (req.op === 'save') {
      done({ id: req.id, entryId: await cache.saveCache(req.paths, req.key) });
      continue;
    }
    const f = await lookup(req);
    if (!f || req.op === 'lookup') {
      done({ id: req.id, matchedKey: f?.matchedKey ?? null });
      continue;
    }
    console.log(`Cache hit for: ${f.matchedKey} (streamed: curl | ${compressionMethod() === 'gzip' ? 'gzip' : 'zstd'} -d | tar -x)`);
    // tar unpacks exactly the entry's paths (the layer's plain file names) and nothing else.
    const bytes = await curlExtract(f.url, req.dir, req.paths, req.maxBytes ?? Number.MAX_SAFE_INTEGER);
    console.log(`Cache Size: ~${Math.round(bytes / (1024 * 1024))} MB (${bytes} B)`);
    done({ id: req.id, matchedKey: f.matchedKey });
  } catch (err) {
    const error = err instanceof Error ? err.message : String(err);
    if (err instanceof RateLimited) done({ id: req.id, error, rateLimitedS: err.retryAfterS });
    else if (err instanceof RefusedError) done({ id: req.id, error, refused: error });
    else done({ id: req.id, error });
  }
}
process.exit(0);

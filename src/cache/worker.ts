// The @actions/cache calls of one run, in one long-lived process: `node cache-worker.js`. Requests
// come as JSON lines on stdin, one at a time; each result goes as a JSON line on fd 3; the toolkit's
// own log lines go to stdout as usual. A restore streams where it can (stream.ts). Each call gets its own directory as cwd and GITHUB_WORKSPACE
// (the toolkit resolves paths against both). A stalled call is ended by killing this process.
import * as cache from '@actions/cache';
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { canStream, streamedLookup, streamedRestore } from './stream.js';

export interface WorkerRequest {
  id: number;
  op: 'lookup' | 'restore' | 'save';
  /** Directory the `paths` are relative to; it becomes cwd and GITHUB_WORKSPACE. */
  dir: string;
  paths: string[];
  key: string;
}

export interface WorkerResult {
  id: number;
  /** lookup/restore: the matched key, or null on a miss (or a swallowed failure). */
  matchedKey?: string | null;
  /** save: the entry id, or -1. */
  entryId?: number;
  error?: string;
  /** Sent once, as id 0, when the toolkit is loaded and requests are read. */
  ready?: boolean;
}

// Layers are qcow2 files compressed already: zstd's level barely changes their size (measured: 1%
// of 200 MiB at level 3, the same at 1) but level 1 takes half the time. The toolkit's tar runs
// zstd without a level, so zstd takes this one.
process.env.ZSTD_CLEVEL ??= '1';

/**
 * Whether lookups and restores stream (stream.ts). Asked at once: the answer starts zstd, and the
 * worker starts while the host is set up, long before the first lookup.
 */
const streams: Promise<boolean> = canStream().catch(() => false);
const done = (r: WorkerResult) => fs.writeSync(3, JSON.stringify(r) + '\n');
done({ id: 0, ready: true });
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const req = JSON.parse(line) as WorkerRequest;
  try {
    process.chdir(req.dir);
    process.env.GITHUB_WORKSPACE = req.dir;
    if (req.op !== 'save' && (await streams)) {
      const matchedKey = req.op === 'lookup' ? await streamedLookup(req.paths, req.key) : await streamedRestore(req.paths, req.key, req.dir, (line) => console.log(line));
      if (matchedKey !== undefined) {
        done({ id: req.id, matchedKey });
        continue;
      }
    }
    if (req.op === 'save') done({ id: req.id, entryId: await cache.saveCache(req.paths, req.key) });
    else done({ id: req.id, matchedKey: (await cache.restoreCache(req.paths, req.key, [], { lookupOnly: req.op === 'lookup' })) ?? null });
  } catch (err) {
    done({ id: req.id, error: err instanceof Error ? err.message : String(err) });
  }
}
process.exit(0);

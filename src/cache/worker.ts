// One @actions/cache call in its own process: `node cache-worker.js '<json request>'`. The result is
// one JSON line on fd 3; the toolkit's own log lines go to stdout as usual.
import * as cache from '@actions/cache';
import * as fs from 'node:fs';

export interface WorkerRequest {
  op: 'lookup' | 'restore' | 'save';
  /** Directory the `paths` are relative to; it becomes cwd and GITHUB_WORKSPACE. */
  dir: string;
  paths: string[];
  key: string;
}

export interface WorkerResult {
  /** lookup/restore: the matched key, or null on a miss (or a swallowed failure). */
  matchedKey?: string | null;
  /** save: the entry id, or -1. */
  id?: number;
  error?: string;
}

const req = JSON.parse(process.argv[2]) as WorkerRequest;
process.chdir(req.dir);
process.env.GITHUB_WORKSPACE = req.dir;
let result: WorkerResult;
try {
  if (req.op === 'save') result = { id: await cache.saveCache(req.paths, req.key) };
  else result = { matchedKey: (await cache.restoreCache(req.paths, req.key, [], { lookupOnly: req.op === 'lookup' })) ?? null };
} catch (err) {
  result = { error: err instanceof Error ? err.message : String(err) };
}
fs.writeSync(3, JSON.stringify(result) + '\n');
process.exit(0);

// The GitHub Actions cache tier: one entry per layer, keyed exactly (no prefix fallback: a near-miss
// snapshot is unusable). Never fatal: every failure is a warning and the layer is built instead.
//
// Each toolkit call runs in a child process (worker.ts). @actions/cache resolves paths against the
// process's cwd and GITHUB_WORKSPACE and its calls cannot be cancelled; a child per call gives each
// its own directory (so concurrent calls don't race on process-global state, and the path strings
// are the bare file names on every runner) and a timeout that really stops a stalled call.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { errorMessage, log } from '../log.js';
import type { WorkerRequest, WorkerResult } from './worker.js';

export interface CacheTimeouts {
  lookupMs: number;
  transferMs: number;
}

export function cacheTimeouts(env: NodeJS.ProcessEnv = process.env): CacheTimeouts {
  return {
    lookupMs: Number(env.RYRA_VM_CACHE_LOOKUP_TIMEOUT_MS) || 60_000,
    transferMs: Number(env.RYRA_VM_CACHE_TRANSFER_TIMEOUT_MS) || 45 * 60_000,
  };
}

/** The Actions cache service is configured for this job. */
export function cacheServiceAvailable(env: NodeJS.ProcessEnv = process.env): boolean {
  const v2 = !!env.ACTIONS_CACHE_SERVICE_V2 && env.ACTIONS_CACHE_SERVICE_V2 !== 'false';
  const url = v2 ? env.ACTIONS_RESULTS_URL : env.ACTIONS_CACHE_URL || env.ACTIONS_RESULTS_URL;
  return !!url && !!env.ACTIONS_RUNTIME_TOKEN && env.ACTIONS_CACHE_MODE !== 'none';
}

function workerCommand(): string[] {
  const candidates = [new URL('./worker.ts', import.meta.url), new URL('./cache-worker.js', import.meta.url), new URL('../cache-worker.js', import.meta.url)];
  for (const u of candidates) {
    const p = fileURLToPath(u);
    if (fs.existsSync(p)) return p.endsWith('.ts') ? ['--import', 'tsx', p] : [p];
  }
  throw new Error('cache worker not found next to the action');
}

export interface CallOutcome extends WorkerResult {
  timedOut?: boolean;
  /** The toolkit reported a 429; seconds until the limit resets when it said. */
  rateLimited?: { retryAfterS: number };
  duplicate?: boolean;
}

/** Runs one toolkit call in a child; its output is logged, scanned for 429s and duplicates. */
export function callWorker(req: WorkerRequest, timeoutMs: number): Promise<CallOutcome> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...workerCommand(), JSON.stringify(req)], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    let out = '';
    let result = '';
    const onLog = (d: Buffer) => {
      const text = d.toString();
      out += text;
      for (const line of text.split('\n')) if (line.trim()) log.debug(`cache: ${line}`);
    };
    child.stdout!.on('data', onLog);
    child.stderr!.on('data', onLog);
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => (result += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (_code, signal) => {
      clearTimeout(timer);
      const outcome: CallOutcome = signal === 'SIGKILL' && !result ? { timedOut: true } : parseResult(result);
      const rate = /rate limit will reset in (\d+) seconds|Rate limited|responded with 429|429/i.exec(out);
      if (rate) outcome.rateLimited = { retryAfterS: Number(rate[1] ?? 0) || 1 };
      if (/another job may be creating this cache|already_exists|already exists/i.exec(out)) outcome.duplicate = true;
      // Surface the toolkit's warnings (it swallows failures into them).
      for (const m of out.matchAll(/^::warning::(.*)$/gm)) log.info(`  cache: ${m[1]}`);
      resolve(outcome);
    });
  });
}

function parseResult(text: string): WorkerResult {
  try {
    return JSON.parse(text.trim().split('\n').pop() ?? '') as WorkerResult;
  } catch {
    return { error: 'the cache worker returned no result' };
  }
}

/** A call with one retry after a 429 (after the service's Retry-After, capped). */
async function callWithRetry(req: WorkerRequest, timeoutMs: number): Promise<CallOutcome> {
  const first = await callWorker(req, timeoutMs);
  if (!first.rateLimited || first.duplicate) return first;
  const wait = Math.min(first.rateLimited.retryAfterS, 60);
  log.info(`  cache: rate limited; retrying ${req.op} of ${req.key} once in ${wait} s`);
  await new Promise((r) => setTimeout(r, wait * 1000));
  return callWorker(req, timeoutMs);
}

export interface ActionsCache {
  lookup(key: string, paths: string[]): Promise<boolean>;
  /** Restores into `dir` (a scratch dir); true when the entry arrived. */
  restore(key: string, paths: string[], dir: string): Promise<boolean>;
  /** Saves files (names relative to `dir`); 'saved', 'exists' (another job saved this key) or 'failed'. */
  save(key: string, paths: string[], dir: string): Promise<'saved' | 'exists' | 'failed'>;
}

export function actionsCache(timeouts = cacheTimeouts()): ActionsCache {
  const describe = (o: CallOutcome, op: string, key: string) =>
    o.timedOut ? `${op} of ${key} timed out (the cache service stalled)` : o.error ? `${op} of ${key} failed: ${o.error}` : undefined;
  return {
    async lookup(key, paths) {
      // Lookups need a directory too; the names are what the entry's version is made from.
      const o = await callWithRetry({ op: 'lookup', dir: process.cwd(), paths, key }, timeouts.lookupMs);
      const problem = describe(o, 'lookup', key);
      if (problem) log.warning(`Actions cache: ${problem}; building instead`);
      return !!o.matchedKey && o.matchedKey.toLowerCase() === key.toLowerCase();
    },
    async restore(key, paths, dir) {
      const o = await callWithRetry({ op: 'restore', dir, paths, key }, timeouts.transferMs);
      const problem = describe(o, 'restore', key);
      if (problem) log.warning(`Actions cache: ${problem}; building instead`);
      return !!o.matchedKey && o.matchedKey.toLowerCase() === key.toLowerCase();
    },
    async save(key, paths, dir) {
      try {
        const o = await callWithRetry({ op: 'save', dir, paths, key }, timeouts.transferMs);
        if (o.id !== undefined && o.id !== -1) return 'saved';
        if (o.duplicate) return 'exists';
        log.warning(`Actions cache: ${describe(o, 'save', key) ?? `save of ${key} failed`}; the layer stays in the local cache only`);
        return 'failed';
      } catch (err) {
        log.warning(`Actions cache: save of ${key} failed: ${errorMessage(err)}`);
        return 'failed';
      }
    },
  };
}

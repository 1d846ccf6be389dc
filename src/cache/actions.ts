// The GitHub Actions cache tier: one entry per layer, keyed exactly (no prefix fallback: a near-miss
// snapshot is unusable). Never fatal: every failure is a warning and the layer is built instead.
// Entries are immutable, so an entry the caller refused would block its key for good: the layer is
// then saved under a successor key (`<key>-r1`, `-r2`, …). The key's own entry wins while it is
// valid: a lookup asks for `<key>` alone and takes only that exact key (the service falls back to
// `<key>` as a prefix, which finds successors and other keys too), so a later writer of `<key>-r1`
// cannot shadow the entry the default branch saved. Only after the caller refused what a key
// brought do its lookups ask for `<key>-r` as a prefix (the newest successor) and take a successor
// other than the one refused; a save then goes under the successor after the newest one known.
//
// The toolkit's calls run in one long-lived child process per run (worker.ts): @actions/cache
// resolves paths against the process's cwd and GITHUB_WORKSPACE, and its calls cannot be
// cancelled, so the child gives each call its own directory, and killing it (and what it started)
// really stops a stalled call. It is started once per run, before the host is set up (loading the toolkit takes a
// quarter of a second that overlaps the QEMU probes), so a restore stays close to plain
// `zstd -d | tar x`. A restore looks the key up first under the short lookup bound; after one
// timeout the tier is off for the rest of the run, so a service outage costs one timeout, not one
// per layer.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NO_HOOKS, type TestHooks } from '../env.js';
import { errorMessage, log } from '../log.js';
import { descendants } from '../util/procfs.js';
import { sleep } from '../util/time.js';
import type { RemoteTier, RestoreResult, SaveResult } from './tier.js';
import type { WorkerRequest, WorkerResult } from './worker.js';

export interface CacheTimeouts {
  lookupMs: number;
  transferMs: number;
}

export function cacheTimeouts(h: Pick<TestHooks, 'cacheLookupMs' | 'cacheTransferMs'> = NO_HOOKS): CacheTimeouts {
  return { lookupMs: h.cacheLookupMs ?? 60_000, transferMs: h.cacheTransferMs ?? 45 * 60_000 };
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

export interface CallOutcome extends Omit<WorkerResult, 'id' | 'rateLimitedS'> {
  timedOut?: boolean;
  /** The toolkit reported a 429; seconds until the limit resets when it said. */
  rateLimited?: { retryAfterS: number };
  duplicate?: boolean;
}

/** The run's worker: started on first use, one call at a time, killed on a timeout. */
class Worker {
  private child: ChildProcess | undefined;
  private waiting = new Map<number, (r: WorkerResult) => void>();
  private nextId = 1;
  private out = '';
  private queue: Promise<unknown> = Promise.resolve();

  private start(): ChildProcess {
    const child = spawn(process.execPath, workerCommand(), { stdio: ['pipe', 'pipe', 'pipe', 'pipe'] });
    const onLog = (d: Buffer) => {
      const text = d.toString();
      this.out += text;
      for (const line of text.split('\n')) if (line.trim()) log.debug(`cache: ${line}`);
    };
    child.stdout!.on('data', onLog);
    child.stderr!.on('data', onLog);
    readline.createInterface({ input: child.stdio[3] as NodeJS.ReadableStream }).on('line', (line) => {
      try {
        const r = JSON.parse(line) as WorkerResult;
        this.waiting.get(r.id)?.(r);
        this.waiting.delete(r.id);
      } catch {
        /* not a result line */
      }
    });
    child.once('exit', () => {
      for (const [id, resolve] of this.waiting) resolve({ id, error: 'the cache worker exited' });
      this.waiting.clear();
      if (this.child === child) this.child = undefined;
    });
    child.stdin!.on('error', () => {});
    return child;
  }

  /** One toolkit call; its log lines are scanned for 429s and duplicates. Calls queue up. */
  call(req: Omit<WorkerRequest, 'id'>, timeoutMs: number): Promise<CallOutcome> {
    const run = async (): Promise<CallOutcome> => {
      const child = (this.child ??= this.start());
      this.hold(child, true);
      const id = this.nextId++;
      this.out = '';
      let timer: NodeJS.Timeout | undefined;
      const result = await new Promise<WorkerResult | undefined>((resolve) => {
        this.waiting.set(id, resolve);
        timer = setTimeout(() => resolve(undefined), timeoutMs);
        child.stdin!.write(JSON.stringify({ ...req, id }) + '\n');
      });
      clearTimeout(timer);
      this.hold(child, false);
      const out = this.out;
      if (!result) {
        this.waiting.delete(id);
        this.kill();
        return { timedOut: true };
      }
      const outcome: CallOutcome = { matchedKey: result.matchedKey, entryId: result.entryId, error: result.error, refused: result.refused };
      if (result.rateLimitedS) outcome.rateLimited = { retryAfterS: result.rateLimitedS };
      // The toolkit's save swallows failures into log lines: a failed one's say why (a 429, a duplicate).
      const failed = req.op === 'save' ? result.entryId === undefined || result.entryId === -1 : !result.matchedKey;
      const rate = req.op === 'save' && failed && /rate limit will reset in (\d+) seconds|Rate limited|\(429\)|responded with 429|status code 429/i.exec(out);
      if (rate) outcome.rateLimited = { retryAfterS: Number(rate[1] ?? 0) || 1 };
      if (failed && /another job may be creating this cache|already_exists|already exists/i.exec(out)) outcome.duplicate = true;
      // Surface the toolkit's warnings (it swallows failures into them).
      for (const m of out.matchAll(/^::warning::(.*)$/gm)) log.info(`  cache: ${m[1]}`);
      return outcome;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Starts the worker now (it loads while the caller does other work); idle, it keeps nothing alive. */
  prestart(): void {
    this.hold((this.child ??= this.start()), false);
  }

  /** An idle worker must not keep the run's process alive; a call in flight must. */
  private hold(child: ChildProcess, busy: boolean): void {
    for (const h of [child, child.stdin, child.stdout, child.stderr, child.stdio[3]] as { ref?: () => void; unref?: () => void }[]) {
      if (busy) h?.ref?.();
      else h?.unref?.();
    }
  }

  /** Kills the worker and what it started (the toolkit's tar and zstd, a streamed restore's curl). */
  kill(): void {
    const pid = this.child?.pid;
    const below = pid ? descendants(pid) : [];
    this.child?.kill('SIGKILL');
    for (const p of below) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    this.child = undefined;
  }

  /** Lets the worker finish and exit (its stdin closes). */
  close(): void {
    this.child?.stdin?.end();
    this.child = undefined;
  }
}

export interface ActionsCache extends RemoteTier {
  /**
   * The caller refused what restore(key) brought: from now on restore(key) and has(key) look at its
   * successors (`<key>-rN`, the newest one not refused), and the next save of `key` goes under the
   * successor after the newest one known.
   */
  refused(key: string): void;
}

const sameKey = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/** Which successor of `key` `matched` is: 0 for `<key>` itself, N for `<key>-rN`, undefined for another key. */
const successorNumber = (key: string, matched: string): number | undefined => {
  if (sameKey(matched, key)) return 0;
  const n = /^-r([1-9]\d{0,8})$/i.exec(matched.slice(key.length));
  return matched.toLowerCase().startsWith(key.toLowerCase()) && n ? Number(n[1]) : undefined;
};

export function actionsCache(timeouts = cacheTimeouts()): ActionsCache {
  const worker = new Worker();
  let off: string | undefined;
  const describe = (o: CallOutcome, op: string, key: string) =>
    o.timedOut ? `${op} of ${key} timed out (the cache service stalled)` : o.error ? `${op} of ${key} failed: ${o.error}` : undefined;
  /** A call with one retry after a 429 (after the service's Retry-After, capped); a timeout turns the tier off. */
  const call = async (req: Omit<WorkerRequest, 'id'>, timeoutMs: number): Promise<CallOutcome | undefined> => {
    if (off) return undefined;
    let o = await worker.call(req, timeoutMs);
    if (o.rateLimited && !o.duplicate && !o.timedOut) {
      const wait = Math.min(o.rateLimited.retryAfterS, 60);
      log.info(`  cache: rate limited; retrying ${req.op} of ${req.key} once in ${wait} s`);
      await sleep(wait * 1000);
      o = await worker.call(req, timeoutMs);
    }
    if (o.timedOut) {
      off = `${req.op} of ${req.key} timed out after ${Math.round(timeoutMs / 1000)} s`;
      log.warning(`Actions cache: ${off}; the cache tier is off for the rest of this run (layers are built and kept locally)`);
    }
    return o;
  };
  /**
   * Per key: the entry (the key itself or a successor) its last restore matched, the newest successor
   * number seen, and the entry last refused (set once the caller refused one: successors are looked
   * at only from then on).
   */
  const matched = new Map<string, string>();
  const newest = new Map<string, number>();
  const refusedEntry = new Map<string, string>();
  const lookupKeys = (key: string) => (refusedEntry.has(key) ? [`${key}-r`] : [key]);
  /** Whether `m`, what a lookup of lookupKeys(key) matched, is an entry to use for `key`. */
  const usable = (key: string, m: string | null | undefined): m is string => {
    if (!m) return false;
    const n = successorNumber(key, m);
    if (n !== undefined) newest.set(key, Math.max(newest.get(key) ?? 0, n));
    const gone = refusedEntry.get(key);
    return gone === undefined ? n === 0 : !!n && !sameKey(m, gone);
  };
  return {
    label: 'Actions cache',
    successors: true,
    get on() {
      return !off;
    },
    async restore(key, paths, dir, { maxBytes }): Promise<RestoreResult> {
      const keys = lookupKeys(key);
      const hit = await call({ op: 'lookup', dir, paths, key, keys }, timeouts.lookupMs);
      if (!hit || hit.timedOut) return 'miss';
      const problem = describe(hit, 'lookup', key);
      if (problem) log.warning(`Actions cache: ${problem}; building instead`);
      if (!usable(key, hit.matchedKey)) return 'miss';
      matched.set(key, hit.matchedKey);
      if (!sameKey(hit.matchedKey, key)) log.info(`  cache: ${key} held a refused entry; restoring its successor ${hit.matchedKey}`);
      const o = await call({ op: 'restore', dir, paths, key, keys, maxBytes }, timeouts.transferMs);
      if (!o || o.timedOut) return 'miss';
      if (o.refused) return `refused: ${o.refused}`;
      const p2 = describe(o, 'restore', key);
      if (p2) log.warning(`Actions cache: ${p2}`);
      return o.matchedKey && sameKey(o.matchedKey, hit.matchedKey) ? 'restored' : 'failed';
    },
    refused(key) {
      refusedEntry.set(key, matched.get(key) ?? key);
    },
    async has(key, paths) {
      const hit = await call({ op: 'lookup', dir: process.cwd(), paths, key, keys: lookupKeys(key) }, timeouts.lookupMs);
      if (!hit || hit.timedOut || hit.error) return undefined;
      return usable(key, hit.matchedKey);
    },
    async save(key, paths, dir): Promise<SaveResult> {
      // After a refusal the key's entry is taken for good: the successor after the refused one (or
      // after the newest one a lookup saw). Not looked up here: a caller that saves without
      // restoring the successors first would add one each run; this one meets `exists` instead.
      const gone = refusedEntry.get(key);
      const as = gone === undefined ? key : `${key}-r${Math.max(newest.get(key) ?? 0, successorNumber(key, gone) ?? 0) + 1}`;
      if (as !== key) log.info(`  cache: ${key} holds a refused entry; saving as ${as}`);
      try {
        const o = await call({ op: 'save', dir, paths, key: as }, timeouts.transferMs);
        if (!o) return 'failed';
        if (o.entryId !== undefined && o.entryId !== -1) return 'saved';
        if (o.duplicate) return 'exists';
        if (!o.timedOut) log.warning(`Actions cache: ${describe(o, 'save', key) ?? `save of ${key} failed`}; the layer stays in the local cache only`);
        return 'failed';
      } catch (err) {
        log.warning(`Actions cache: save of ${as} failed: ${errorMessage(err)}`);
        return 'failed';
      }
    },
    prestart: () => worker.prestart(),
    close: () => worker.close(),
  };
}

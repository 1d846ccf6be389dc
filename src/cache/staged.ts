// The one restore path, for every layer and for the SSH key: a tier's entry lands in a private
// staging dir of the cache dir, is checked there against what the plan computes (the entry's own
// `accept`), and is placed only then. What a tier hands over is data: a name becomes a path only
// through plannedPath (one of the caller's planned names), and every outcome is a typed value the
// compiler makes each caller handle.
import * as fs from 'node:fs';
import { log } from '../log.js';
import { stagedFilesProblem } from './confine.js';
import { tempPath } from './local.js';
import type { RemoteTier } from './tier.js';

/** A field of an entry that differs from the plan's value (or the check that failed), and how. */
export interface Refusal {
  field: string;
  why: string;
}

export type Outcome<T> =
  | { kind: 'restored'; value: T }
  | { kind: 'miss' }
  | ({ kind: 'refused' } & Refusal)
  | { kind: 'failed'; why: string };

export type Accepted<T> = { ok: T } | Refusal;

/** An entry the plan expects a tier to hold. */
export interface PlannedEntry<T> {
  /** The tier key. */
  key: string;
  /** Every file the entry holds, by the plan's own names (the only names ever joined onto a dir). */
  files: readonly string[];
  /** The most bytes the entry may unpack to. */
  maxBytes: number;
  /** For log lines: `the prepared layer`, `the SSH key`. */
  what: string;
  /**
   * Checks the staged entry (by then exactly `files`, each a plain regular file of the staging dir)
   * against the plan and places it; or the field that differs. `verified`: sha256 of files the tier
   * computed from the bytes as they landed (name → hex).
   */
  accept(staging: string, verified: ReadonlyMap<string, string>): Promise<Accepted<T>>;
}

/** One restore of `e` from `tier` into a fresh staging dir under `dir`, removed afterwards. */
export async function restoreOnce<T>(dir: string, tier: RemoteTier, e: PlannedEntry<T>): Promise<Outcome<T>> {
  const staging = tempPath(dir, 'restore');
  fs.mkdirSync(staging, { mode: 0o700 });
  try {
    const verified = new Map<string, string>();
    const got = await tier.restore(e.key, [...e.files], staging, { maxBytes: e.maxBytes, verified });
    if (got === 'miss') return { kind: 'miss' };
    if (got === 'failed') return { kind: 'failed', why: 'the download failed' };
    if (got !== 'restored') return { kind: 'refused', field: 'archive', why: got.slice('refused: '.length) };
    const files = stagedFilesProblem(staging, [...e.files]);
    if (files) return { kind: 'refused', field: 'files', why: files };
    const a = await e.accept(staging, verified);
    return 'ok' in a ? { kind: 'restored', value: a.ok } : { kind: 'refused', field: a.field, why: a.why };
  } catch (err) {
    return { kind: 'failed', why: err instanceof Error ? err.message : String(err) };
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

/** What restoreEntry got: the value and the tier it came from, and the tiers that missed it. */
export interface Found<T> {
  value: T;
  tier: RemoteTier;
}

/**
 * `e` from the first tier (in order) that holds a valid entry. A transfer that failed is tried once
 * more (a cut transfer is far likelier than a broken entry, and a download costs seconds where a
 * rebuild costs minutes). A refused entry is said in one warning naming the field, the tier is told
 * (its next save goes under a successor key, or over the entry), and a tier that keeps successors
 * is asked once more (it then looks at those only).
 */
export async function restoreEntry<T>(dir: string, tiers: readonly RemoteTier[], e: PlannedEntry<T>, instead: string): Promise<Found<T> | undefined> {
  for (const tier of tiers) {
    let failed = 0;
    let refused = 0;
    while (tier.on) {
      const r = await restoreOnce(dir, tier, e);
      if (r.kind === 'restored') return { value: r.value, tier };
      if (r.kind === 'miss') break;
      if (r.kind === 'refused') {
        const again = tier.successors && !refused;
        log.warning(`${tier.label} entry ${e.key} refused: its ${r.field}: ${r.why}; ${again ? 'looking for a successor entry' : instead}`);
        if (!refused++) tier.refused?.(e.key);
        if (!again) break;
        continue;
      }
      if (failed++ || !tier.on) {
        log.warning(`${tier.label} entry ${e.key}: ${r.why}; ${instead}`);
        break;
      }
      log.warning(`${tier.label} entry ${e.key}: ${r.why}; downloading it once more`);
    }
  }
  return undefined;
}

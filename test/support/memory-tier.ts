// An in-memory remote tier for unit tests of the orchestration (no service, no QEMU): entries are
// maps of file name → bytes. Like the Actions cache, an entry is immutable and a refused key's next
// save goes under a successor (`<key>-rN`), which a restore after the refusal finds.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RemoteTier, RestoreResult, SaveResult } from '../../src/cache/tier.js';

export class MemoryTier implements RemoteTier {
  readonly calls = { restore: [] as string[], save: [] as string[] };
  on = true;
  readonly successors = true;
  /** Restores that fail as a cut transfer would, before any succeeds. */
  failNext = 0;
  private readonly refusedKeys = new Set<string>();

  constructor(
    readonly label = 'memory tier',
    readonly entries = new Map<string, Map<string, Buffer>>(),
  ) {}

  /** The same entries as another run sees them (nothing of this run's refusals). */
  again(): MemoryTier {
    return new MemoryTier(this.label, this.entries);
  }

  /** The key a restore of `key` reads: the newest successor once `key` was refused. */
  private current(key: string): string | undefined {
    if (!this.refusedKeys.has(key)) return this.entries.has(key) ? key : undefined;
    const successors = [...this.entries.keys()].filter((k) => k.startsWith(`${key}-r`)).sort((a, b) => Number(b.split('-r').pop()) - Number(a.split('-r').pop()));
    return successors[0];
  }

  async restore(key: string, files: string[], staging: string): Promise<RestoreResult> {
    this.calls.restore.push(key);
    if (this.failNext > 0) {
      this.failNext--;
      return 'failed';
    }
    const k = this.current(key);
    const e = k && this.entries.get(k);
    if (!e) return 'miss';
    // As the real tiers do: only the names asked for are written.
    for (const name of files) if (e.has(name)) fs.writeFileSync(path.join(staging, name), e.get(name)!);
    return 'restored';
  }

  async has(key: string): Promise<boolean> {
    return this.current(key) !== undefined;
  }

  async save(key: string, files: string[], dir: string): Promise<SaveResult> {
    let as = key;
    if (this.refusedKeys.has(key)) for (let n = 1; this.entries.has((as = `${key}-r${n}`)); n++);
    this.calls.save.push(as);
    if (this.entries.has(as)) return 'exists';
    this.entries.set(as, new Map(files.map((f) => [f, fs.readFileSync(path.join(dir, f))])));
    return 'saved';
  }

  refused(key: string): void {
    this.refusedKeys.add(key);
  }

  close(): void {}
}

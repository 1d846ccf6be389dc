// Where the time of one `ryra-vm run` (or boot) goes, phase by phase, for the bench's fresh-step
// rows: with RYRA_VM_PHASES naming a file, each run appends one JSON line of its phases (ms).
import * as fs from 'node:fs';
import { performance } from 'node:perf_hooks';

export class Phases {
  private last = performance.now();
  private readonly start = this.last;
  readonly ms: Record<string, number> = {};

  /** Ends the phase running since the last mark, as `name` (a name marked twice adds up). */
  mark(name: string): void {
    const now = performance.now();
    this.ms[name] = (this.ms[name] ?? 0) + (now - this.last);
    this.last = now;
  }

  /** Appends `{...extra, total, phases}` to RYRA_VM_PHASES, when it is set. */
  write(extra: Record<string, unknown>, file = process.env.RYRA_VM_PHASES): void {
    if (!file) return;
    const phases = Object.fromEntries(Object.entries(this.ms).map(([k, v]) => [k, Math.round(v)]));
    fs.appendFileSync(file, JSON.stringify({ ...extra, total: Math.round(performance.now() - this.start), phases }) + '\n');
  }
}

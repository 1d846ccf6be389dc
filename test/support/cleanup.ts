// What end-to-end tests start, they stop: a per-file temp root, and a check that no QEMU they
// started outlives them.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export function tempRoot(name: string): { dir: string; remove(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ryra-test-${name}-`));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** PIDs of qemu-system processes whose command line mentions `marker` (e.g. a temp root). */
export function qemuProcessesUnder(marker: string): number[] {
  let out = '';
  try {
    out = execFileSync('pgrep', ['-af', 'qemu-system'], { encoding: 'utf8' });
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
  return out
    .split('\n')
    .filter((l) => l.includes(marker))
    .map((l) => Number(l.split(' ')[0]))
    .filter((n) => n > 0);
}

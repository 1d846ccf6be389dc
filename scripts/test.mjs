// The test command: node's own runner over TypeScript test files (via tsx), one file at a time
// (end-to-end files boot TCG guests on a 2-core machine). `npm test [unit|e2e] [name filter]`.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const [kind, filter] = process.argv.slice(2);
const dirs = kind === 'unit' || kind === 'e2e' ? [kind] : ['unit', 'e2e'];
const files = dirs.flatMap((d) =>
  fs.existsSync(`test/${d}`)
    ? fs.readdirSync(`test/${d}`).filter((f) => f.endsWith('.test.ts')).sort().map((f) => `test/${d}/${f}`)
    : [],
).filter((f) => !filter || f.includes(filter));
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
// Spec output for people, TAP into a file for the closing count line.
const tap = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-test-')), 'results.tap');
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=tap', `--test-reporter-destination=${tap}`, ...files],
  { stdio: 'inherit' },
);
const text = fs.existsSync(tap) ? fs.readFileSync(tap, 'utf8') : '';
const count = (name) => Number(new RegExp(`^# ${name} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
console.log(`\n${count('pass')} passed, ${count('fail') + count('cancelled')} failed, ${count('skipped')} skipped`);
fs.rmSync(path.dirname(tap), { recursive: true, force: true });
process.exit(r.status ?? 1);

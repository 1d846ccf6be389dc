// The test command: node's own runner over TypeScript test files (via tsx), one file at a time
// (end-to-end files boot TCG guests on a 2-core machine). `npm test [unit|e2e] [name filter]`.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

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
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files], {
  stdio: 'inherit',
});
process.exit(r.status ?? 1);

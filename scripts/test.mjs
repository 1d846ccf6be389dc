// The test command: node's own runner over TypeScript test files (via tsx). `npm test [unit|e2e]
// [name filter]`. Unit files run beside the end-to-end files, which run in two lanes side by side
// (each lane one file at a time): a TCG guest keeps about one of this machine's two cores busy.
// Each lane starts with the file that builds the layers others use (layers are shared through one
// cache dir per run, RYRA_TEST_SHARED; a file that needs a layer being built waits for its lock),
// then takes the next file of one shared queue whenever it is free, so neither lane idles while the
// other has work. RYRA_TEST_LANES=1 runs them in one lane. Prints each test's time, slowest first,
// and a closing `N passed, N failed, N skipped` line.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

// Lane 1 builds the full-package layers (the README's examples use them); lane 2 the light layers,
// through the Actions cache (most other files use them).
const HEADS = [['pipeline'], ['deps', 'action']];
// Then the rest, longest first, by the per-test times this command prints; arm64 third, so that on a
// fresh machine its image (building in the background in .ci/run) is ready when a lane reaches it.
const QUEUE = ['browser', 'configs', 'arm64', 'engine', 'follow', 'no-user-bus', 'hostile-cache', 'readme', 'kvm', 'registry', 'run', 'hostile-guest', 'jobs'];

const [kind, filter] = process.argv.slice(2);
const list = (d) =>
  fs.existsSync(`test/${d}`)
    ? fs.readdirSync(`test/${d}`).filter((f) => f.endsWith('.test.ts')).sort().map((f) => `test/${d}/${f}`).filter((f) => !filter || f.includes(filter))
    : [];
const unit = kind === 'e2e' ? [] : list('unit');
const e2e = kind === 'unit' ? [] : list('e2e');
if (unit.length + e2e.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const nameOf = (f) => path.basename(f, '.test.ts');
const pick = (names) => names.map((n) => e2e.find((f) => nameOf(f) === n)).filter(Boolean);
let heads = HEADS.map(pick);
const queue = pick(QUEUE);
queue.push(...e2e.filter((f) => !heads.flat().includes(f) && !queue.includes(f)));
if (process.env.RYRA_TEST_LANES === '1') heads = [heads.flat()];
const laneCount = e2e.length ? heads.length : 0;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-test-'));
const shared = path.join(work, 'shared');
fs.mkdirSync(shared);
process.env.RYRA_TEST_SHARED ??= shared;

/**
 * One node --test process per file (node sorts the files it is handed): `files` in order, then the
 * next file of `queue` (shared with the other lanes) until it is empty.
 */
async function runFiles(label, files, queue = []) {
  const start = Date.now();
  const runs = [];
  const done = [];
  for (let f = files.shift() ?? queue.shift(); f; f = files.shift() ?? queue.shift()) {
    runs.push(await runFile(label, f, runs.length));
    done.push(f);
  }
  return { label, code: runs.some((r) => r.code !== 0) ? 1 : 0, taps: runs.map((r) => r.tap), ms: Date.now() - start, files: done };
}

/** One node --test process over `file`, its spec output prefixed, TAP into a file. */
function runFile(label, file, n) {
  const tap = path.join(work, `${label}-${n}.tap`);
  const files = [file];
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', '--test-reporter-destination=stdout', '--test-reporter=tap', `--test-reporter-destination=${tap}`, ...files],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const prefix = (stream, out) => {
    let buf = '';
    stream.setEncoding('utf8').on('data', (d) => {
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop();
      for (const l of lines) out.write(`[${label}] ${l}\n`);
    });
    stream.on('end', () => buf && out.write(`[${label}] ${buf}\n`));
  };
  prefix(child.stdout, process.stdout);
  prefix(child.stderr, process.stderr);
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, tap })));
}

// The unit files run beside the lanes' first minutes (they are light: sockets, small files, a few
// seconds of QEMU).
if (laneCount) console.log(`end-to-end: ${heads.map((l, i) => `lane${i + 1} starts with ${l.map(nameOf).join(' → ')}`).join(' | ')}; then each lane takes the next of ${queue.map(nameOf).join(', ')}`);
const results = await Promise.all([
  ...(unit.length ? [runFiles('unit', [...unit])] : []),
  ...heads.slice(0, laneCount).map((l, i) => runFiles(`lane${i + 1}`, [...l], queue)),
]);

// Counts and per-test times from the TAP files (top-level file subtests carry the file's time).
let pass = 0;
let fail = 0;
let skipped = 0;
const timings = [];
const failures = [];
for (const r of results) {
  const text = r.taps.map((t) => (fs.existsSync(t) ? fs.readFileSync(t, 'utf8') : '')).join('\n');
  const count = (name) => [...text.matchAll(new RegExp(`^# ${name} (\\d+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0);
  pass += count('pass');
  fail += count('fail') + count('cancelled');
  skipped += count('skipped');
  if (!text && r.code !== 0) fail++;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^( *)(?:not )?ok \d+ - (.*?)(?: # SKIP.*)?$/.exec(lines[i]);
    if (!m) continue;
    const yaml = lines.slice(i + 1, i + 6).join('\n');
    const d = /duration_ms: ([\d.]+)/.exec(yaml);
    if (d && !/type: 'suite'/.test(yaml)) timings.push({ name: m[2], s: Number(d[1]) / 1000, lane: r.label });
    // A failed test (not a suite that failed only through its subtests): its name, where, and the
    // first lines of its error, repeated at the end, where a log cut to its tail still shows them.
    if (lines[i].trimStart().startsWith('not ok')) {
      let end = i + 1;
      while (end < lines.length && (lines[end].startsWith(`${m[1]}  `) || lines[end].trim() === '')) end++;
      const body = lines.slice(i + 1, end).join('\n');
      if (/failureType: 'subtestsFailed'/.test(body)) continue;
      const where = /location: '([^']*)'/.exec(body)?.[1] ?? '';
      const error = /error: \|-?\n((?:.*\n?){1,6})/.exec(body)?.[1] ?? /error: (.*)/.exec(body)?.[1] ?? '';
      failures.push(`[${r.label}] ${m[2]}\n    at ${path.relative(process.cwd(), where) || '?'}\n${error.split('\n').map((l) => l.trim()).filter((l) => l && !/^(code|name): /.test(l)).slice(0, 6).map((l) => `    ${l}`).join('\n')}`);
    }
  }
  console.log(`${r.label}: ${(r.ms / 1000).toFixed(0)} s for ${r.files.map(nameOf).join(', ')}`);
}
console.log('\ntests by time:');
for (const t of [...timings].sort((a, b) => b.s - a.s).filter((t) => t.s >= 1)) console.log(`  ${t.s.toFixed(1).padStart(7)} s  [${t.lane}] ${t.name}`);
fs.rmSync(work, { recursive: true, force: true });
if (failures.length) console.log(`\nfailed:\n${failures.join('\n')}`);
console.log(`\n${pass} passed, ${fail} failed, ${skipped} skipped`);
process.exit(fail > 0 || results.some((r) => r.code !== 0) ? 1 : 0);

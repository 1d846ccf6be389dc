// `npm run bench:fresh`: where a step's time goes, phase by phase (issue 30's baseline). The
// production bundle (dist/cli.js) runs `ryra-vm run --fresh` of `true` with a one-file workspace,
// five times; five steps of `true` on one reused VM; and four `--fresh` steps at once (wall time,
// and the summed peak RSS of their QEMUs vs one VM's). Each run appends its phases to a file
// (RYRA_VM_PHASES, src/util/phases.ts); the table shows each phase's median. Layers: the light
// configuration (jq, 1024 MiB) in RYRA_BENCH_CACHE (built there when missing, ~5 min under TCG).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureFixture } from '../test/support/fixtures.js';
import { exec } from '../test/support/runner.js';
import { LIGHT, prepareArgs } from '../test/support/shared.js';

const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
const kvm = process.env.RYRA_BENCH_KVM ?? 'false';
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-bench-fresh-'));
const cacheDir = process.env.RYRA_BENCH_CACHE ?? path.join(root, 'cache');
const cli = path.resolve('dist/cli.js');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

interface PhaseLine {
  fresh: boolean;
  booted: boolean;
  total: number;
  phases: Record<string, number>;
}

const rt = { ...process.env, RYRA_VM_RUNTIME_DIR: path.join(root, 'rt'), HOME: path.join(root, 'home') };
fs.mkdirSync(rt.HOME, { recursive: true });
const ws = path.join(root, 'ws');
fs.mkdirSync(ws);
fs.writeFileSync(path.join(ws, 'README'), 'one file\n');
const script = path.join(root, 'true.sh');
fs.writeFileSync(script, 'true\n');

/** One `ryra-vm run` step as a runner runs it: its wall time and the phases it wrote. */
async function step(args: string[], phasesFile: string): Promise<{ wall: number; line: PhaseLine }> {
  const before = fs.existsSync(phasesFile) ? fs.readFileSync(phasesFile, 'utf8').split('\n').filter(Boolean).length : 0;
  const r = await exec(process.execPath, [cli, 'run', '--config', record, ...args, script], { ...rt, GITHUB_WORKSPACE: ws, RYRA_VM_PHASES: phasesFile }, ws);
  if (r.code !== 0) throw new Error(`ryra-vm run ${args.join(' ')} exited ${r.code}:\n${r.stderr.slice(-3000)}`);
  const lines = fs.readFileSync(phasesFile, 'utf8').split('\n').filter(Boolean);
  if (lines.length !== before + 1) throw new Error('the step wrote no phase line');
  return { wall: r.ms, line: JSON.parse(lines.at(-1)!) };
}

function table(title: string, runs: { wall: number; line: PhaseLine }[]) {
  console.log(`\n${title} (median of ${runs.length})`);
  const names = [...new Set(runs.flatMap((r) => Object.keys(r.line.phases)))];
  const w = Math.max(...names.map((n) => n.length), 24);
  for (const n of names) console.log(`  ${n.padEnd(w)}  ${s(median(runs.map((r) => r.line.phases[n] ?? 0))).padStart(8)}`);
  console.log(`  ${'in-process total'.padEnd(w)}  ${s(median(runs.map((r) => r.line.total))).padStart(8)}`);
  console.log(`  ${'wall (node start → exit)'.padEnd(w)}  ${s(median(runs.map((r) => r.wall))).padStart(8)}`);
}

/** Peak summed RSS of the QEMUs under our runtime dir while `p` runs (sampled every 100 ms). */
async function peakQemuRss<T>(p: Promise<T>): Promise<{ value: T; peak: number }> {
  let peak = 0;
  let done = false;
  const sample = async () => {
    while (!done) {
      let sum = 0;
      for (const pid of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
        try {
          const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          if (!cmd.startsWith('qemu-system') && !cmd.includes('/qemu-system')) continue;
          if (!cmd.includes(root)) continue;
          const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
          if (m) sum += Number(m[1]) * 1024;
        } catch {
          /* gone */
        }
      }
      peak = Math.max(peak, sum);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const sampling = sample();
  try {
    return { value: await p, peak };
  } finally {
    done = true;
    await sampling;
  }
}

let record = '';
try {
  const fx = ensureFixture(arch);
  console.error(`bench: light layers in ${cacheDir}…`);
  const prep = await exec(process.execPath, [cli, ...prepareArgs({ ...LIGHT, arch }, fx, cacheDir, ['--kvm', kvm])], rt);
  if (prep.code !== 0) throw new Error(prep.stderr.slice(-3000));
  record = JSON.parse(prep.stdout).manifest;
  const file = path.join(root, 'phases.jsonl');

  console.error('bench: five --fresh steps of `true`…');
  await step(['--fresh'], file); // warms the page cache with the snapshot's files
  const fresh = [];
  for (let i = 0; i < 5; i++) fresh.push(await step(['--fresh'], file));

  console.error('bench: five steps on one reused VM…');
  await step(['--name', 'reused'], file); // boots it
  const reused = [];
  for (let i = 0; i < 5; i++) reused.push(await step(['--name', 'reused'], file));
  const { peak: oneVm } = await peakQemuRss(step(['--name', 'reused'], file));
  await exec(process.execPath, [cli, 'stop', '--all'], rt);

  console.error('bench: four --fresh steps at once…');
  const one = await peakQemuRss(step(['--fresh'], file));
  const t0 = Date.now();
  const four = await peakQemuRss(Promise.all([0, 1, 2, 3].map((i) => step(['--fresh'], path.join(root, `phases-${i}.jsonl`)))));
  const fourWall = Date.now() - t0;

  console.log(`\nryra-vm fresh-step bench (${arch}, ${kvm === 'false' ? 'tcg' : 'kvm: ' + kvm}, dist/cli.js, Node ${process.versions.node}, ${os.cpus().length} CPUs)`);
  table('ryra-vm run --fresh: `true`, one-file workspace', fresh);
  table('ryra-vm run on a reused VM: `true`', reused);
  const restoreToFirst = fresh.map((r) => ['disk copies', 'QEMU start', 'state load → SSH', 'VM key'].reduce((a, n) => a + (r.line.phases[n] ?? 0), 0));
  console.log('\nsummary                                           measured   goal');
  console.log(`  --fresh step of true (wall, median)             ${s(median(fresh.map((r) => r.wall))).padStart(8)}   ≤ 2.00 s`);
  console.log(`  step on a reused VM (wall, median)              ${s(median(reused.map((r) => r.wall))).padStart(8)}   ≤ 1.00 s`);
  console.log(`  restore → first command (median)                ${s(median(restoreToFirst)).padStart(8)}   ≤ 1.00 s`);
  console.log(`  four --fresh at once vs one (wall)              ${s(fourWall).padStart(8)} vs ${s(one.value.wall)} = ${(fourWall / one.value.wall).toFixed(2)}×   ≤ 2×`);
  console.log(`  four --fresh at once vs one VM (peak QEMU RSS)  ${(four.peak / 2 ** 20).toFixed(0)} MiB vs ${(Math.max(one.peak, oneVm) / 2 ** 20).toFixed(0)} MiB = ${(four.peak / Math.max(one.peak, oneVm)).toFixed(2)}×   ≤ 2×`);
  if (kvm === 'false') console.log('  KVM rows: skipped (RYRA_BENCH_KVM=auto on a host whose /dev/kvm works prints them)');
} finally {
  await new Promise<void>((r) => spawn(process.execPath, [cli, 'stop', '--all'], { env: rt, stdio: 'ignore' }).on('close', () => r()));
  fs.rmSync(root, { recursive: true, force: true });
}
process.exit(0);

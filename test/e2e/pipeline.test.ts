// The layer pipeline through the bundled CLI on real guests (amd64, TCG), with the catalogue's real
// package list (podman & co., plus jq) installed from Debian's archive inside the guest: a run whose
// node process is killed mid-build (its QEMU left running), then two concurrent runs that build
// each layer once and leave no QEMU of the first run; a restore that finds the packages; an
// all-valid rerun; a tampered image refused. The layers land in the suite's shared cache dir (the
// README's examples and the browser layer use them).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { killAllCliRuns, runCli } from '../support/cli.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { FULL, prepareArgs, sharedDir } from '../support/shared.js';
import { inRestoredVm } from '../support/vm.js';

const root = tempRoot('pipeline');
const figures: string[] = [];
let fx: Fixture;

before(() => {
  fx = ensureFixture('amd64');
});
after(async () => {
  killAllCliRuns();
  await new Promise((r) => setTimeout(r, 500));
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`pipeline figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

let runN = 0;
function prepare(cacheDir: string, o: { fx?: Fixture; extra?: string[]; env?: NodeJS.ProcessEnv } = {}) {
  const rt = path.join(root.dir, `runtime-${++runN}`);
  const run = runCli(prepareArgs(FULL, o.fx ?? fx, cacheDir, o.extra), { RYRA_VM_RUNTIME_DIR: rt, TMPDIR: root.dir, ...o.env });
  const result = async () => {
    const r = await run.done;
    assert.equal(r.code, 0, `prepare failed:\n${r.stderr.slice(-4000)}`);
    const outputs = JSON.parse(r.stdout) as Record<string, string>;
    const record = JSON.parse(fs.readFileSync(outputs.manifest, 'utf8')) as RunRecord;
    return { ...r, outputs, record, sources: Object.fromEntries(record.layers.map((l) => [l.layer, l.source])) };
  };
  return { run, result };
}

/** QEMU processes of the run whose node pid is `pid` (its work dirs carry that pid in their temp names). */
const qemuOf = (pid: number) => qemuProcessesUnder(`.ryra-tmp-${pid}-`);
const tempsOf = (dir: string, pid: number) => fs.readdirSync(dir).filter((f) => f.includes(`.ryra-tmp-${pid}-`));

describe('raw layer refuses a tampered image', () => {
  test('one byte changed: fails naming both digests, keeps nothing', async () => {
    const tampered = path.join(root.dir, 'tampered.qcow2');
    fs.copyFileSync(fx.image, tampered);
    const fd = fs.openSync(tampered, 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 70_000);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, 70_000);
    fs.closeSync(fd);
    const cacheDir = path.join(root.dir, 'cache-tampered');
    const r = await prepare(cacheDir, { fx: { ...fx, image: tampered } }).run.done;
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`checksum mismatch for .*tampered.qcow2: expected sha512:${fx.sha512}, got sha512:[0-9a-f]{128}`));
    assert.deepEqual(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.qcow2') || f.endsWith('.partial')), []);
  });
});

describe('pipeline amd64, the full package list', { timeout: 80 * 60_000 }, () => {
  test('a run killed mid-build (node only, QEMU left running), then two concurrent runs: both succeed, each layer built once, no QEMU of the first run survives', async () => {
    const cacheDir = sharedDir();
    const killed = prepare(cacheDir);
    // As soon as its guest is up (QEMU started, the build under way), before any of its work pays off.
    await killed.run.waitFor(/prepared-\w+-[0-9a-f]+: QEMU pid \d+/);
    // Only the node process dies (as a crashed runner worker would): its QEMU keeps running.
    const pid = killed.run.child.pid!;
    const orphans = qemuOf(pid);
    assert.equal(orphans.length, 1, 'the killed run had a QEMU');
    process.kill(pid, 'SIGKILL');
    await killed.run.done;
    assert.deepEqual(qemuOf(pid), orphans, 'its QEMU outlived it');
    assert.ok(tempsOf(cacheDir, pid).length > 0, 'the killed run left its temp work behind');

    const t0 = Date.now();
    const a = prepare(cacheDir);
    const b = prepare(cacheDir);
    const [r1, r2] = await Promise.all([a.result(), b.result()]);
    for (const layer of ['prepared', 'snapshot']) {
      const built = [r1.sources[layer], r2.sources[layer]].filter((s) => s === 'built').length;
      assert.equal(built, 1, `${layer} built once: ${r1.sources[layer]} / ${r2.sources[layer]}`);
    }
    for (const pid of orphans) assert.equal(fs.existsSync(`/proc/${pid}`), false, `the first run's QEMU ${pid} was killed`);
    assert.match(r1.stderr + r2.stderr, new RegExp(`killing QEMU pid ${orphans[0]} left running in .* by an interrupted run`));
    // The same layers; only cache-hit differs (one run built them, the other waited and found them).
    assert.deepEqual({ ...r1.outputs, manifest: '', 'cache-hit': '' }, { ...r2.outputs, manifest: '', 'cache-hit': '' });
    assert.deepEqual([r1.outputs['cache-hit'], r2.outputs['cache-hit']].sort(), ['false', 'true']);
    assert.deepEqual(tempsOf(cacheDir, pid), [], 'its stale temps were cleaned');
    assert.equal(r1.outputs.accel, 'tcg');
    assert.equal(fs.statSync(r1.outputs['ssh-key']).mode & 0o777, 0o600);
    figures.push(`cold prepare, full package list (raw + prepared + snapshot) ${((Date.now() - t0) / 1000).toFixed(0)} s`);

    const out = await inRestoredVm(r1.record, root.dir, 'jq --version && podman --version && dpkg -s restic postgresql-client uidmap >/dev/null && echo all-there');
    assert.match(out, /^jq-1\.\d[\s\S]*podman version \d[\s\S]*all-there$/);

    const again = await prepare(cacheDir).result();
    assert.deepEqual(Object.values(again.sources).filter((s) => s !== 'local'), [], JSON.stringify(again.sources));
    assert.equal(again.sources.raw, undefined, 'a valid prepared layer needs no raw layer');
    assert.ok(again.ms < 10_000, `all-valid rerun took ${again.ms} ms`);
    figures.push(`all-valid rerun ${(again.ms / 1000).toFixed(1)} s`);
  });

  test('a snapshot manifest from another QEMU version is rebuilt, not loaded', { skip: process.env.RYRA_TEST_FULL !== '1' && 'RYRA_TEST_FULL=1 (the unit test of invalidReason covers the check; this rebuild costs minutes)' }, async () => {
    const cacheDir = sharedDir();
    const m = fs.readdirSync(cacheDir).find((f) => /-snapshot-2048-[0-9a-f]+\.manifest\.json$/.test(f))!;
    const file = path.join(cacheDir, m);
    const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
    manifest.inputs.qemu = '6.2.0';
    fs.writeFileSync(file, JSON.stringify(manifest));
    const r = await prepare(cacheDir).result();
    assert.equal(r.sources.prepared, 'local');
    assert.equal(r.sources.snapshot, 'built');
    assert.match(r.stderr, /snapshot layer .* not usable: built with other qemu \("6\.2\.0" ≠ "\d+\.\d+/);
  });
});

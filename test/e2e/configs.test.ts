// One cache dir, many configurations (amd64, TCG): A (packages: jq, the suite's light configuration)
// and B (jq tree) side by side, started together and alternating; VMs from both at once, each with
// its own packages and its own SSH key; an independent restore from the run record's recipe; and
// a size budget that evicts the least recently used layers but never a configuration in use.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { dirBytes, listLayers } from '../../src/cache/local.js';
import { BUILD_APT_FILES } from '../../src/layers/guest.js';
import { SshClient } from '../../src/vm/ssh.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { killAllCliRuns, runCli } from '../support/cli.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { LIGHT, linkLayers, prepareArgs, sharedDir, sharedLayers, type SharedConfig } from '../support/shared.js';
import { withRecipeRestore } from '../support/vm.js';

const root = tempRoot('configs');
const cacheDir = path.join(root.dir, 'cache');
const home = path.join(root.dir, 'home');
const rt = path.join(root.dir, 'rt');
const A: SharedConfig = LIGHT;
const B: SharedConfig = { ...LIGHT, name: 'B', packages: 'jq tree' };
let fx: Fixture;
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  // A starts out as the suite's shared layers (hard links: layers are immutable files).
  const { record } = await sharedLayers(A, path.join(root.dir, 'rt-shared'));
  const names = new Set(['test-ssh-key', 'test-ssh-key.pub']);
  for (const f of [record.outputs.image, record.restore!.disk, record.restore!.efivars, record.restore!.seed]) names.add(path.basename(f));
  for (const n of [...names]) if (n.endsWith('.qcow2') && !n.includes('-efivars')) names.add(n.replace(/\.qcow2$/, '.manifest.json'));
  // And the raw image its prepared layer came from (the light and full configurations share it).
  linkLayers(sharedDir(), cacheDir, (n) => names.has(n) || n.startsWith('debian-13-generic-amd64'));
  fs.mkdirSync(home, { recursive: true });
});
after(async () => {
  killAllCliRuns();
  await runCli(['stop', '--all'], env()).done;
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`configs figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

function env(c: SharedConfig = A): NodeJS.ProcessEnv {
  return { RYRA_VM_RUNTIME_DIR: rt, HOME: home, TMPDIR: root.dir };
}

async function prepare(c: SharedConfig, extra: string[] = []) {
  const r = await runCli(prepareArgs(c, fx, cacheDir, extra), env(c)).done;
  assert.equal(r.code, 0, `prepare ${c.name} failed:\n${r.stderr.slice(-4000)}`);
  const outputs = JSON.parse(r.stdout) as Record<string, string>;
  const record = JSON.parse(fs.readFileSync(outputs.manifest, 'utf8')) as RunRecord;
  return { ...r, outputs, record, sources: Object.fromEntries(record.layers.map((l) => [l.layer, l.source])) };
}

const allLocal = (s: Record<string, string>) => Object.values(s).every((x) => x === 'local');

describe('configurations side by side (amd64, TCG)', { timeout: 60 * 60_000 }, () => {
  let recA: RunRecord;
  let recB: RunRecord;

  test('A and B started together both succeed; then A, B again are all local', async () => {
    const [a1, b1] = await Promise.all([prepare(A), prepare(B)]);
    assert.ok(allLocal(a1.sources), JSON.stringify(a1.sources));
    assert.deepEqual(b1.sources, { prepared: 'built', snapshot: 'built', raw: 'local' });
    figures.push(`B built beside A in ${(b1.ms / 1000).toFixed(0)} s`);
    const a2 = await prepare(A);
    const b2 = await prepare(B);
    assert.ok(allLocal(a2.sources) && allLocal(b2.sources), `${JSON.stringify(a2.sources)} ${JSON.stringify(b2.sources)}`);
    assert.ok(a2.ms < 10_000 && b2.ms < 10_000, `${a2.ms} ms, ${b2.ms} ms`);
    recA = a2.record;
    recB = b2.record;
    // Distinct files, distinct records.
    assert.notEqual(recA.outputs.image, recB.outputs.image);
    assert.notEqual(recA.outputs['snapshot-disk'], recB.outputs['snapshot-disk']);
    assert.notEqual(recA.outputs.manifest, recB.outputs.manifest);
    figures.push(`all-local reruns ${(a2.ms / 1000).toFixed(1)} s / ${(b2.ms / 1000).toFixed(1)} s`);
  });

  test('VMs from A and B at once each see their own packages; each VM has its own key', async () => {
    const [va, vb] = await Promise.all([
      runCli(['boot', '--name', 'va', '--config', recA.outputs.manifest, '--json'], env()).done,
      runCli(['boot', '--name', 'vb', '--config', recB.outputs.manifest, '--json'], env()).done,
    ]);
    assert.equal(va.code, 0, va.stderr);
    assert.equal(vb.code, 0, vb.stderr);
    const a = JSON.parse(va.stdout);
    const b = JSON.parse(vb.stdout);
    assert.deepEqual([a.mode, b.mode], ['restore', 'restore'], `${va.stderr}\n${vb.stderr}`);
    assert.equal((await runCli(['ssh', 'va', '--', 'jq --version && ! command -v tree'], env()).done).code, 0, 'A: jq, no tree');
    assert.equal((await runCli(['ssh', 'vb', '--', 'jq --version && tree --version'], env()).done).code, 0, 'B: jq and tree');
    // The build's own apt/dpkg settings went before the image was kept.
    const leftovers = BUILD_APT_FILES.map((f) => `! test -e ${f.path}`).join(' && ');
    assert.equal((await runCli(['ssh', 'vb', '--', leftovers], env()).done).code, 0, 'no build-time apt/dpkg settings in the image');

    // The snapshot's shared key logs into no VM that ryra-vm started; the VM's own key does.
    const shared = fs.readFileSync(recA.outputs['ssh-key'], 'utf8');
    await assert.rejects(SshClient.connect({ port: a.port, user: 'ryra', privateKey: shared, hostKey: a.hostKey }, 30_000), /authentication/i);
    const own = await SshClient.connect({ port: a.port, user: 'ryra', privateKey: fs.readFileSync(a.key, 'utf8'), hostKey: a.hostKey }, 30_000);
    assert.equal((await own.exec('whoami')).stdout.trim(), 'ryra');
    own.end();
    assert.equal(fs.statSync(a.key).mode & 0o777, 0o600);
    // ~/.ssh/config names the VMs: plain OpenSSH works.
    const ssh = execFileSync('ssh', ['-F', path.join(home, '.ssh', 'config'), 'vb', 'hostname'], { encoding: 'utf8', env: { ...process.env, HOME: home } });
    assert.equal(ssh.trim(), 'vb');
    figures.push(`boot A ${(a.readyMs / 1000).toFixed(1)} s, B ${(b.readyMs / 1000).toFixed(1)} s at once`);
  });

  test('a restore from the run record\'s recipe with only the tokens replaced reaches SSH', async () => {
    await withRecipeRestore(recB, root.dir, async (c) => {
      assert.match((await c.exec('tree --version')).stdout, /^tree v/);
    });
  });

  test('over the budget the least recently used layers go; a configuration in use never', async () => {
    // A's VM stops; B's stays up, so B is in use. Then A runs again (A is the most recently used).
    assert.equal((await runCli(['stop', 'va'], env()).done).code, 0);
    const again = await prepare(A);
    assert.ok(allLocal(again.sources), `${JSON.stringify(again.sources)}\n${again.stderr.slice(-3000)}`);
    const before = listLayers(cacheDir).sort((x, y) => x.lastUse - y.lastUse);
    const raw = before.find((l) => l.layer === 'raw')!;
    assert.equal(before[0].base, raw.base, 'the raw image was last used when B was built: the oldest');
    // A budget just under what the dir holds: the oldest layer not in use goes, and only it.
    const budget = dirBytes(cacheDir) - 1;
    const tight = await prepare(A, ['--cache-max-size', String(budget)]);
    assert.deepEqual(tight.record.evicted.map((e) => e.base), [raw.base]);
    assert.ok(tight.record.cacheDirBytes <= budget && dirBytes(cacheDir) <= budget, `${tight.record.cacheDirBytes} / ${dirBytes(cacheDir)} > ${budget}`);
    // A budget nothing fits: everything not in use goes; B (its VM runs) and A (this run uses it) stay.
    const none = await prepare(A, ['--cache-max-size', '1']);
    assert.deepEqual(none.record.evicted, []);
    const gc = await runCli(['gc', '--cache-dir', cacheDir, '--max-size', '1'], env()).done;
    assert.equal(gc.code, 0, gc.stderr);
    assert.match(gc.stdout, /evicted [1-9]\d* layers?/, 'with no run holding A, A goes');
    const left = listLayers(cacheDir).map((l) => l.base).sort();
    assert.deepEqual(left, [path.basename(recB.outputs.image, '.qcow2'), path.basename(recB.outputs['snapshot-disk'], '.qcow2')].sort());
    assert.equal((await runCli(['ssh', 'vb', '--', 'tree --version'], env()).done).code, 0, 'B\'s VM runs on');
    assert.equal((await runCli(['stop', 'vb'], env()).done).code, 0);
  });
});

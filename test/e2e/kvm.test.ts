// `kvm: auto` proves itself (amd64). Two failure shapes of a first boot under KVM, each through the
// real pipeline on the light configuration's prepared layer:
// - QEMU exits at once under KVM. On this machine kind that is real: /dev/kvm is missing ("Could not
//   access KVM kernel module"), or present with vCPUs that abort ("failed to set MSR 0x10a"). A test
//   hook skips the device check and the probe, so the first boot meets it.
// - The guest makes no progress: a test hook starts the KVM boot frozen (-S).
// Under auto each ends in the TCG snapshot, restorable (the light configuration's, in the shared
// cache dir: after the fallback the run plans its layers anew under TCG and finds it); the verdict is
// recorded and the next run goes straight to TCG; under `kvm: true` each fails with the cause in one
// line, fast.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunRecord } from '../../src/record.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { runCli } from '../support/cli.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { LIGHT, configEnv, linkLayers, prepareArgs, sharedDir, sharedLayers, type SharedConfig } from '../support/shared.js';
import { inRestoredVm } from '../support/vm.js';

const root = tempRoot('kvm');
const K: SharedConfig = LIGHT;
let fx: Fixture;
let prepared: string[];
let snapshot: string[];
const figures: string[] = [];

before(async () => {
  fx = ensureFixture('amd64');
  const { record } = await sharedLayers(LIGHT, path.join(root.dir, 'rt-shared'));
  const base = path.basename(record.outputs.image, '.qcow2');
  prepared = [`${base}.qcow2`, `${base}.manifest.json`, 'test-ssh-key', 'test-ssh-key.pub'];
  const snap = path.basename(record.restore!.disk, '.qcow2');
  snapshot = [record.restore!.disk, record.restore!.efivars, record.restore!.seed].map((f) => path.basename(f)).concat(`${snap}.manifest.json`);
});
after(async () => {
  const left = qemuProcessesUnder(root.dir);
  root.remove();
  if (figures.length) console.log(`kvm figures: ${figures.join('; ')}`);
  assert.deepEqual(left, [], 'no qemu process may outlive the suite');
});

/** A cache dir of its own with the shared prepared layer and its TCG snapshot, and no KVM verdict. */
function cacheDir(name: string): string {
  const dir = path.join(root.dir, name);
  linkLayers(sharedDir(), dir, (n) => prepared.includes(n) || snapshot.includes(n));
  return dir;
}

async function prepare(dir: string, kvm: 'auto' | 'true', hooks: NodeJS.ProcessEnv) {
  const args = prepareArgs(K, fx, dir).map((a, i, all) => (all[i - 1] === '--kvm' ? kvm : a));
  const r = await runCli(args, { ...configEnv(K), RYRA_VM_RUNTIME_DIR: path.join(dir, '..', `rt-${path.basename(dir)}`), ...hooks }).done;
  const record = r.code === 0 ? (JSON.parse(fs.readFileSync(JSON.parse(r.stdout).manifest, 'utf8')) as RunRecord) : undefined;
  return { ...r, record, sources: Object.fromEntries((record?.layers ?? []).map((l) => [l.layer, l.source])) };
}

async function restores(rec: RunRecord): Promise<void> {
  assert.match(await inRestoredVm(rec, root.dir, 'jq --version'), /^jq-1/);
}

const warnings = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('warning: KVM is not used'));
const ASSUME = { RYRA_VM_TEST_ASSUME_KVM: '1' };
const STALL = { RYRA_VM_TEST_ASSUME_KVM: '1', RYRA_VM_TEST_STALL_KVM: '1', RYRA_VM_TEST_STALL_MS: '20000' };

describe('kvm: auto falls back, kvm: true fails fast (amd64)', { timeout: 45 * 60_000 }, () => {
  let first: { dir: string; rec: RunRecord };

  test('QEMU exiting under KVM at the first boot: auto warns once, goes on under TCG, records why', async () => {
    const dir = cacheDir('abort');
    const r = await prepare(dir, 'auto', ASSUME);
    assert.equal(r.code, 0, r.stderr.slice(-4000));
    assert.equal(r.record!.outputs.accel, 'tcg');
    // The KVM snapshot (its own key) was the first boot; under TCG the TCG one is there.
    assert.match(r.stderr, /Building the snapshot layer \(debian-13-amd64-snapshot-1024-[0-9a-f]+\.qcow2\)/);
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    assert.equal(warnings(r.stderr).length, 1, r.stderr);
    assert.match(warnings(r.stderr)[0], /KVM is not used: QEMU exited at once under KVM: .*(KVM|kvm|MSR).*Falling back to TCG.*kvm group/);
    assert.equal(r.record!.restore!.layout.accel.accel, 'tcg');
    const verdicts = JSON.parse(fs.readFileSync(path.join(dir, 'kvm-verdicts.json'), 'utf8'));
    const v = Object.values(verdicts)[0] as { usable: boolean; source: string; reason: string };
    assert.equal(v.usable, false);
    assert.equal(v.source, 'boot');
    assert.match(Object.keys(verdicts)[0], /^kernel .*, qemu-system-x86_64 \d+\.\d+\.\d+, CPU /);
    await restores(r.record!);
    first = { dir, rec: r.record! };
    figures.push(`abort → fallback ${(r.ms / 1000).toFixed(0)} s`);
  });

  test('the next run on that host takes the recorded verdict: no KVM attempt, the reason said', async () => {
    const r = await prepare(first.dir, 'auto', ASSUME);
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    assert.match(r.stderr, /accel tcg \(record: QEMU exited at once under KVM: .*recorded .* by the boot for kernel .*delete .*kvm-verdicts\.json to try KVM again\)/);
    assert.doesNotMatch(r.stderr, /under KVM before|QEMU pid .*\n.*exited/);
    assert.ok(r.ms < 15_000, `${r.ms} ms`);
  });

  test('kvm: true with QEMU exiting under KVM: fails in one line with the cause and the fix, fast', async () => {
    const r = await prepare(cacheDir('abort-true'), 'true', ASSUME);
    assert.equal(r.code, 1);
    const line = r.stderr.trim().split('\n').pop()!;
    assert.match(line, /^ryra-vm: kvm: true, but KVM cannot run the guest here: QEMU exited at once under KVM: .*Fix: add the runner user to the kvm group/);
    assert.ok(r.ms < 60_000, `${r.ms} ms`);
  });

  test('a guest that makes no progress under KVM: auto falls back after the stall bound; the TCG snapshot restores', async () => {
    const dir = cacheDir('stall');
    const r = await prepare(dir, 'auto', STALL);
    assert.equal(r.code, 0, r.stderr.slice(-4000));
    assert.equal(r.record!.outputs.accel, 'tcg');
    assert.equal(warnings(r.stderr).length, 1, r.stderr);
    assert.match(warnings(r.stderr)[0], /KVM is not used: the guest made no progress under KVM: the guest printed nothing on its serial console for 20 s/);
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    await restores(r.record!);
    figures.push(`stall → fallback ${(r.ms / 1000).toFixed(0)} s`);
  });

  test('kvm: true with a guest that makes no progress: fails with the cause at the stall bound', async () => {
    const r = await prepare(cacheDir('stall-true'), 'true', STALL);
    assert.equal(r.code, 1);
    assert.match(r.stderr.trim().split('\n').pop()!, /^ryra-vm: kvm: true, but KVM cannot run the guest here: the guest made no progress under KVM/);
    assert.ok(r.ms < 60_000, `${r.ms} ms`);
  });

  test('without hooks, this host\'s own KVM: auto says why it uses TCG, true fails naming it', async () => {
    const dir = cacheDir('plain');
    const auto = await prepare(dir, 'auto', {});
    assert.equal(auto.code, 0, auto.stderr.slice(-3000));
    if (auto.record!.outputs.accel === 'kvm') return; // a host where KVM works: nothing more to show here
    assert.equal(warnings(auto.stderr).length, 1);
    const t = await prepare(cacheDir('plain-true'), 'true', {});
    assert.equal(t.code, 1);
    assert.match(t.stderr.trim().split('\n').pop()!, /^ryra-vm: kvm: true, but KVM cannot run the guest here: (\/dev\/kvm|QEMU exited under KVM|no sign of life)/);
    assert.ok(t.ms < 60_000);
  });
});

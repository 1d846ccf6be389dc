// `kvm: auto` proves itself (amd64), through the real pipeline on the light configuration's prepared
// layer. Each host shape a test needs it makes itself, whatever this host's KVM is (hosts of this
// kind differ: no /dev/kvm, QEMU aborting at vCPU init, a vCPU that never runs): a stand-in
// qemu-system-x86_64 first on PATH does under KVM what QEMU does on such a host
// (test/support/qemu-stand-in.sh), and RYRA_VM_TEST_KVM_DEVICE moves the device check.
// - QEMU exits at once at the first boot under KVM (a hook skips the device check and the probe).
// - The guest makes no progress at the first boot: the stand-in starts it frozen (-S).
// - No /dev/kvm: the device is named, nothing probed. A vCPU that never advances: the probe says so.
// Under auto each ends in the TCG snapshot, restorable (the light configuration's, in the shared
// cache dir: after the fallback the run plans its layers anew under TCG and finds it); a failed boot's
// verdict is recorded and the next run goes straight to TCG; under `kvm: true` each fails with the
// cause in one line, fast. Last, without any of this, this host's own KVM: the test says what it found.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { kvmDeviceProblem } from '../../src/host/kvm.js';
import type { RunRecord } from '../../src/record.js';
import { qemuProcessesUnder, tempRoot } from '../support/cleanup.js';
import { runCli } from '../support/cli.js';
import { ensureFixture, type Fixture } from '../support/fixtures.js';
import { qemuStandIn, type KvmShape } from '../support/qemu-stand-in.js';
import { LIGHT, linkLayers, prepareArgs, sharedDir, sharedLayers, type SharedConfig } from '../support/shared.js';
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
  const r = await runCli(args, { RYRA_VM_RUNTIME_DIR: path.join(dir, '..', `rt-${path.basename(dir)}`), ...hooks }).done;
  const record = r.code === 0 ? (JSON.parse(fs.readFileSync(JSON.parse(r.stdout).manifest, 'utf8')) as RunRecord) : undefined;
  return { ...r, record, sources: Object.fromEntries((record?.layers ?? []).map((l) => [l.layer, l.source])) };
}

async function restores(rec: RunRecord): Promise<void> {
  assert.match(await inRestoredVm(rec, root.dir, 'jq --version'), /^jq-1/);
}

const warnings = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('warning: KVM is not used'));
/** PATH with a stand-in QEMU for a host of that shape first (test/support/qemu-stand-in.sh). */
const shaped = (shape: KvmShape) => qemuStandIn(shape, path.join(root.dir, `qemu-${shape}`)).env;
/** The first boot under KVM meets the shape: no device check, no probe. */
const FIRST_BOOT = { RYRA_VM_TEST_ASSUME_KVM: '1' };
const STALL_MS = { RYRA_VM_TEST_STALL_MS: '20000' };

describe('kvm: auto falls back, kvm: true fails fast (amd64)', { timeout: 45 * 60_000 }, () => {
  let first: { dir: string; rec: RunRecord };

  test('QEMU exiting under KVM at the first boot: auto warns once, goes on under TCG, records why', async () => {
    const dir = cacheDir('abort');
    const r = await prepare(dir, 'auto', { ...shaped('abort'), ...FIRST_BOOT });
    assert.equal(r.code, 0, r.stderr.slice(-4000));
    assert.equal(r.record!.outputs.accel, 'tcg');
    // The KVM snapshot (its own key) was the first boot; under TCG the TCG one is there.
    assert.match(r.stderr, /Building the snapshot layer \(debian-13-amd64-snapshot-1024-[0-9a-f]+\.qcow2\)/);
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    assert.equal(warnings(r.stderr).length, 1, r.stderr);
    assert.match(warnings(r.stderr)[0], /KVM is not used: QEMU exited at once under KVM: qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\. Falling back to TCG.*kvm group/);
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
    const r = await prepare(first.dir, 'auto', { ...shaped('abort'), ...FIRST_BOOT });
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    assert.match(r.stderr, /accel tcg \(record: QEMU exited at once under KVM: .*MSR 0x10a.*recorded .* by the boot for kernel .*delete .*kvm-verdicts\.json to try KVM again\)/);
    assert.doesNotMatch(r.stderr, /under KVM before|QEMU pid .*\n.*exited/);
    assert.ok(r.ms < 15_000, `${r.ms} ms`);
  });

  test('kvm: true with QEMU exiting under KVM: fails in one line with the cause and the fix, fast', async () => {
    // QEMU's message where the module is missing, the other way it exits at once.
    const r = await prepare(cacheDir('abort-true'), 'true', { ...shaped('missing'), ...FIRST_BOOT });
    assert.equal(r.code, 1);
    const line = r.stderr.trim().split('\n').pop()!;
    assert.match(line, /^ryra-vm: kvm: true, but KVM cannot run the guest here: QEMU exited at once under KVM: Could not access KVM kernel module: No such file or directory\. Fix: add the runner user to the kvm group/);
    assert.ok(r.ms < 60_000, `${r.ms} ms`);
  });

  test('a guest that makes no progress under KVM: auto falls back after the stall bound; the TCG snapshot restores', async () => {
    const dir = cacheDir('stall');
    const r = await prepare(dir, 'auto', { ...shaped('hang'), ...FIRST_BOOT, ...STALL_MS });
    assert.equal(r.code, 0, r.stderr.slice(-4000));
    assert.equal(r.record!.outputs.accel, 'tcg');
    assert.equal(warnings(r.stderr).length, 1, r.stderr);
    assert.match(warnings(r.stderr)[0], /KVM is not used: the guest made no progress under KVM: the guest printed nothing on its serial console for 20 s/);
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    await restores(r.record!);
    figures.push(`stall → fallback ${(r.ms / 1000).toFixed(0)} s`);
  });

  test('kvm: true with a guest that makes no progress: fails with the cause at the stall bound', async () => {
    const r = await prepare(cacheDir('stall-true'), 'true', { ...shaped('hang'), ...FIRST_BOOT, ...STALL_MS });
    assert.equal(r.code, 1);
    assert.match(r.stderr.trim().split('\n').pop()!, /^ryra-vm: kvm: true, but KVM cannot run the guest here: the guest made no progress under KVM/);
    assert.ok(r.ms < 60_000, `${r.ms} ms`);
  });

  test('no /dev/kvm: auto names the device and goes on under TCG, nothing probed or recorded; kvm: true fails naming it', async () => {
    const missing = { RYRA_VM_TEST_KVM_DEVICE: path.join(root.dir, 'no-kvm') };
    const dir = cacheDir('nodev');
    const auto = await prepare(dir, 'auto', missing);
    assert.equal(auto.code, 0, auto.stderr.slice(-3000));
    assert.equal(auto.record!.outputs.accel, 'tcg');
    assert.deepEqual(auto.sources, { prepared: 'local', snapshot: 'local' });
    assert.equal(warnings(auto.stderr).length, 1, auto.stderr);
    assert.match(warnings(auto.stderr)[0], /KVM is not used: \/.*\/no-kvm does not exist \(no KVM on this host, or nested virtualization is off\)\. Falling back to TCG/);
    assert.doesNotMatch(auto.stderr, /KVM probe/);
    assert.equal(fs.existsSync(path.join(dir, 'kvm-verdicts.json')), false, 'a device check is never recorded');
    const t = await prepare(cacheDir('nodev-true'), 'true', missing);
    assert.equal(t.code, 1);
    assert.match(t.stderr.trim().split('\n').pop()!, /^ryra-vm: kvm: true, but KVM cannot run the guest here: \/.*\/no-kvm does not exist .*Fix: /);
    assert.ok(t.ms < 30_000, `${t.ms} ms`);
  });

  test('a vCPU that never advances, found by the probe: auto records it and goes on under TCG', async () => {
    // /dev/null opens read-write: the device check passes and the (stand-in) probe decides.
    const dir = cacheDir('probe-hang');
    const r = await prepare(dir, 'auto', { ...shaped('hang'), RYRA_VM_TEST_KVM_DEVICE: '/dev/null' });
    assert.equal(r.code, 0, r.stderr.slice(-3000));
    assert.equal(r.record!.outputs.accel, 'tcg');
    assert.deepEqual(r.sources, { prepared: 'local', snapshot: 'local' });
    assert.match(r.stderr, /KVM probe \(kernel .*\): not usable, no sign of life under KVM within 4 s/);
    assert.equal(warnings(r.stderr).length, 1, r.stderr);
    assert.match(warnings(r.stderr)[0], /KVM is not used: no sign of life under KVM within 4 s \(the vCPU did not advance, the firmware printed nothing\)\. Falling back to TCG/);
    const v = Object.values(JSON.parse(fs.readFileSync(path.join(dir, 'kvm-verdicts.json'), 'utf8')))[0] as { usable: boolean; source: string };
    assert.deepEqual([v.usable, v.source], [false, 'probe']);
  });

  test('without hooks, this host\'s own KVM: says what it found; auto uses what follows, true fails naming it', async () => {
    const device = kvmDeviceProblem();
    const auto = await prepare(cacheDir('plain'), 'auto', {});
    assert.equal(auto.code, 0, auto.stderr.slice(-3000));
    const probe = /KVM probe \([^\n]*\): (usable|not usable), ([^\n]*) \((\d+) ms\)\n/.exec(auto.stderr);
    const accel = auto.record!.outputs.accel;
    let reason: string;
    if (device) {
      figures.push(`this host: no usable /dev/kvm (${device})`);
      assert.equal(probe, null, 'a missing device is never probed');
      reason = device;
    } else {
      assert.ok(probe, auto.stderr.slice(-3000));
      const [, verdict, said, ms] = probe;
      reason = said;
      const found = verdict === 'usable' ? 'KVM runs the guest' : said.startsWith('QEMU exited') ? 'QEMU exits under KVM' : 'the vCPU never advances under KVM';
      figures.push(`this host: ${found} (probe ${ms} ms: ${said}; accel ${accel})`);
      if (verdict === 'usable') {
        // A working KVM is used, unless the boot itself then failed under it (a fallback, said once).
        if (accel === 'kvm') return assert.equal(warnings(auto.stderr).length, 0);
        return assert.match(warnings(auto.stderr).join('\n'), /^warning: KVM is not used: (QEMU exited|the guest made no progress)/);
      }
      if (said.startsWith('QEMU exited')) {
        assert.match(said, /^QEMU exited under KVM: \S/, 'QEMU\'s own error');
        assert.ok(Number(ms) < 4000, `${ms} ms: at once`);
      } else {
        assert.match(said, /^no sign of life under KVM within 4 s/);
        assert.ok(Number(ms) >= 4000, `${ms} ms: the whole bound`);
      }
    }
    assert.equal(accel, 'tcg');
    assert.equal(warnings(auto.stderr).length, 1, auto.stderr);
    assert.ok(warnings(auto.stderr)[0].includes(`KVM is not used: ${reason}.`), warnings(auto.stderr)[0]);
    const t = await prepare(cacheDir('plain-true'), 'true', {});
    assert.equal(t.code, 1);
    assert.ok(t.stderr.trim().split('\n').pop()!.startsWith(`ryra-vm: kvm: true, but KVM cannot run the guest here: ${reason}. Fix: `), t.stderr.slice(-2000));
    assert.ok(t.ms < 60_000, `${t.ms} ms`);
  });
});

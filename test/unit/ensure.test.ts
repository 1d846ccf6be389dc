// The one ensure step and the one restore path, with an in-memory tier and no QEMU (qemu-img makes
// the small images): what a restore hands over is used only where it equals what the plan
// computes; a refused entry is said once, naming the field, and rebuilt; a later run restores the
// rebuilt one. Also the SSH key kept in step with the tiers, and ensureLayers' fall back from KVM
// to TCG (a stand-in QEMU that exits at once under KVM: no guest runs).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { processHolder } from '../../src/cache/local.js';
import { hashOf, MANIFEST_MAX_BYTES, readManifest, type Manifest } from '../../src/cache/manifest.js';
import { NO_HOOKS } from '../../src/env.js';
import { readVerdict } from '../../src/host/kvm.js';
import { accelArgs } from '../../src/host/platform.js';
import type { Host } from '../../src/host/setup.js';
import { parseConfig } from '../../src/inputs.js';
import { log, setLogger, type Logger } from '../../src/log.js';
import { manifestPath } from '../../src/names.js';
import { timeoutsFor, type LayerContext } from '../../src/layers/context.js';
import { cacheKeyFor, cachePaths, ensureLayer, syncTiers, type LayerSpec } from '../../src/layers/ensure.js';
import { ensureLayers, recipesFor } from '../../src/layers/pipeline.js';
import { planLayers, type LayerPlan } from '../../src/layers/plan.js';
import { ensureSshKey, SSH_KEY_CACHE_KEY } from '../../src/layers/sshkey.js';
import type { LayerResult } from '../../src/record.js';
import { generateKeyPair, writeKeyFiles } from '../../src/vm/ssh.js';
import { recipe } from '../../src/vm/spec.js';
import { MemoryTier } from '../support/memory-tier.js';
import { qemuStandIn } from '../support/qemu-stand-in.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ensure-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const img = (...args: string[]) => execFileSync('qemu-img', ['create', '-q', ...args]);

const host: Host = {
  qemuArch: 'x86_64',
  qemu: { binary: 'qemu-system-x86_64', path: '/usr/bin/qemu-system-x86_64', version: '7.2.22', machine: 'pc-q35-7.2' },
  accel: accelArgs('x86_64', 'tcg'),
  firmware: { code: '/fw/code.fd', vars: '/fw/vars.fd', format: 'raw', source: 'known path', size: 4 << 20 },
  cpuIdentity: 'tcg',
  kvmMode: 'false',
  identity: 'test host',
  accelReason: 'kvm: false',
};

/** Warnings and info lines of the code under test. */
let said: { warnings: string[]; info: string[] };
const original = log;
beforeEach(() => {
  said = { warnings: [], info: [] };
  const l: Logger = { info: (m) => said.info.push(m), warning: (m) => said.warnings.push(m), error: () => {}, debug: () => {}, group: (_n, fn) => fn() };
  setLogger(l);
});
afterEach(() => setLogger(original));

/** A runner: its own empty cache dir, a config and plan for it, and the tiers it uses. */
function runner(tiers: MemoryTier[], publicKey = 'ssh-ed25519 AAAA test') {
  const dir = fs.mkdtempSync(path.join(tmp, 'runner-'));
  const inputs: Record<string, string> = { arch: 'amd64', 'cache-dir': dir, 'disk-size': '1G', memory: '1024' };
  const config = parseConfig((n) => inputs[n], { arch: 'amd64', env: {}, homedir: '/h' });
  const plan = planLayers(config, host, publicKey, recipesFor(config, 'apt'), { algorithm: 'sha512', hex: 'b'.repeat(128) });
  const ctx: LayerContext = { config, host, image: plan.image, dir, timeouts: timeoutsFor('tcg'), tiers, hooks: NO_HOOKS, holder: processHolder(), pending: [] };
  const builds: string[] = [];
  const results: LayerResult[] = [];
  const prepared = (): LayerSpec => ({
    plan: plan.prepared,
    build: async () => {
      builds.push('prepared');
      img('-f', 'qcow2', path.join(dir, plan.prepared.files[0]), '1M');
    },
  });
  const snapshot = (parent: Manifest): LayerSpec => ({
    plan: plan.snapshot,
    parentId: parent.id,
    backing: path.join(dir, plan.prepared.files[0]),
    keyed: true,
    build: async () => {
      builds.push('snapshot');
      const [disk, efivars, seed] = plan.snapshot.files.map((f) => path.join(dir, f));
      img('-f', 'qcow2', '-b', path.join(dir, plan.prepared.files[0]), '-F', 'qcow2', disk);
      img('-f', 'qcow2', efivars, '1M');
      fs.writeFileSync(seed, 'seed');
      return { stateBytes: 1234 };
    },
  });
  const both = async () => {
    const p = await ensureLayer(ctx, prepared(), results);
    return { prepared: p, snapshot: await ensureLayer(ctx, snapshot(p), results) };
  };
  return { dir, config, plan, ctx, builds, results, prepared, snapshot, both };
}

/** The files under `root` other than those of the runners' cache dirs (nothing may land there). */
const outside = () => fs.readdirSync(tmp).filter((f) => !f.startsWith('runner-'));

/** An entry of `tier` with its manifest changed by `edit` (as an attacker who can write one entry would). */
function forge(tier: MemoryTier, key: string, p: LayerPlan, edit: (m: Record<string, unknown>) => unknown) {
  const e = new Map(tier.entries.get(key)!);
  const name = path.basename(manifestPath('', p.base));
  const m = JSON.parse(e.get(name)!.toString());
  const out = edit(m) ?? m;
  e.set(name, Buffer.isBuffer(out) ? out : Buffer.from(JSON.stringify(out)));
  tier.entries.set(key, e);
}

describe('ensure: the one ensure step', () => {
  test('a miss is built once and saved; another runner restores it and builds nothing; the manifest placed is the plan\'s', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    const built = await a.both();
    assert.deepEqual(a.builds, ['prepared', 'snapshot']);
    assert.equal(tier.entries.size, 2);
    const b = runner([tier]);
    const got = await b.both();
    assert.deepEqual(b.builds, [], 'nothing built');
    assert.deepEqual(b.results.map((r) => r.source), ['actions cache', 'actions cache']);
    assert.equal(got.snapshot.id, built.snapshot.id);
    assert.deepEqual(got.snapshot.layout, b.plan.snapshot.layout);
    assert.equal(got.snapshot.backing, path.join(b.dir, b.plan.prepared.files[0]), 'the disk points at this runner\'s parent');
    assert.equal(execFileSync('qemu-img', ['info', '--output=json', path.join(b.dir, b.plan.snapshot.files[0])], { encoding: 'utf8' }).includes(b.dir), true);
    assert.deepEqual(said.warnings, []);
  });

  // Each field a manifest carries, forged in an entry whose files are all sound: refused in one
  // warning naming the field, rebuilt, nothing written outside, a later run restores the rebuilt one.
  const forged: [string, string, (m: Record<string, unknown>) => unknown][] = [
    ['layout', 'an extra accelerator argument', (m) => void (m.layout as { accel: { args: string[] } }).accel.args.push('-object', 'memory-backend-file,id=x,mem-path=/tmp/pwned,share=on,size=1M')],
    ['layout', 'another machine', (m) => void ((m.layout as { machine: string }).machine = 'pc-q35-2.0')],
    ['backing', 'a host file as the parent', (m) => void (m.backing = '/etc/passwd')],
    ['layer', 'another layer', (m) => void (m.layer = 'raw')],
    ['inputs', 'other inputs', (m) => void ((m.inputs as Record<string, unknown>).qemu = '1.0')],
    ['key', 'another key', (m) => void (m.key = 'abc')],
    ['parentId', 'another parent', (m) => void (m.parentId = 'not-the-parent')],
    ['manifest', 'a file outside its dir', (m) => void (m.files as { name: string }[]).push({ name: '../victim', size: 1, sha256: 'a'.repeat(64) } as never)],
    ['files', 'a file the plan does not have', (m) => void (m.files as { name: string }[]).push({ name: 'extra.qcow2', size: 1, sha256: 'a'.repeat(64) } as never)],
    ['manifest', 'a name that climbs out', (m) => void ((m.files as { name: string }[])[0].name = '../../x.qcow2')],
    ['manifest', 'no JSON', () => Buffer.from('{')],
    ['manifest', 'a huge manifest', (m) => void (m.inputs = { pad: 'x'.repeat(MANIFEST_MAX_BYTES) })],
    ['files', 'a digest that does not hold', (m) => void ((m.files as { sha256: string }[])[0].sha256 = 'b'.repeat(64))],
  ];
  for (const [field, what, edit] of forged) {
    test(`a snapshot entry whose manifest has ${what} is refused naming its ${field}, rebuilt, and the rebuilt one restored later`, async () => {
      const tier = new MemoryTier();
      const a = runner([tier]);
      const { prepared } = await a.both();
      const key = cacheKeyFor(a.plan.snapshot, prepared.id);
      forge(tier, key, a.plan.snapshot, edit);
      const b = runner([tier.again()]);
      // b gets the sound prepared layer, then the forged snapshot.
      const { snapshot } = await b.both();
      assert.deepEqual(b.builds, ['snapshot'], 'the snapshot is rebuilt');
      assert.equal(said.warnings.length, 1, said.warnings.join('\n'));
      assert.match(said.warnings[0], new RegExp(`entry ${key} refused: its ${field}: `));
      assert.deepEqual(outside(), []);
      assert.deepEqual(snapshot.layout, b.plan.snapshot.layout);
      const argv = recipe(b.plan.snapshot.layout!, { efiCode: host.firmware.code, seedIso: 'seed.iso' });
      assert.ok(!argv.some((x) => x.includes('pwned')), 'no argument of the entry on the command line');
      assert.ok(tier.entries.has(`${key}-r1`), 'the rebuilt layer is saved under a successor');
      assert.ok(!fs.existsSync('/tmp/pwned'));
      said.warnings = [];
      const c = runner([tier.again()]);
      await c.both();
      assert.deepEqual(c.builds, [], 'a later run restores the rebuilt layer');
      assert.deepEqual(said.warnings.length, 1, 'the forged base entry is said again, then its successor restores');
    });
  }

  test('an entry whose qcow2 is backed by a host file, keeps its data in one, or is no qcow2 is refused naming the file', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    await ensureLayer(a.ctx, a.prepared(), a.results);
    const name = a.plan.prepared.files[0];
    const cases: [string, (f: string) => void, RegExp][] = [
      ['backed', (f) => img('-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', f, '1M'), /is backed by \/etc\/hostname \(raw\), where it may have no backing file/],
      ['data file', (f) => img('-f', 'qcow2', '-o', `data_file=${f}.data`, f, '1M'), /keeps its data in another file/],
      ['raw', (f) => fs.writeFileSync(f, Buffer.alloc(65536)), /is raw, not qcow2/],
    ];
    for (const [what, make, why] of cases) {
      const f = path.join(fs.mkdtempSync(path.join(a.dir, 'forge-')), name);
      make(f);
      const bytes = fs.readFileSync(f);
      const e = new Map(tier.entries.get(a.plan.prepared.cacheKey)!);
      e.set(name, bytes);
      tier.entries.set(`${what}`, e);
      forge(tier, what, a.plan.prepared, (m) => {
        const [file] = m.files as { size: number; sha256: string }[];
        file.size = bytes.length;
        file.sha256 = createHash('sha256').update(bytes).digest('hex');
      });
      tier.entries.set(a.plan.prepared.cacheKey, tier.entries.get(what)!);
      // The successor the case before saved would be restored after the refusal: gone.
      for (const k of tier.entries.keys()) if (k.startsWith(`${a.plan.prepared.cacheKey}-r`)) tier.entries.delete(k);
      said.warnings = [];
      const b = runner([tier.again()]);
      await ensureLayer(b.ctx, b.prepared(), b.results);
      assert.deepEqual(b.builds, ['prepared'], what);
      assert.match(said.warnings[0], new RegExp(`refused: its ${name.replace(/\./g, '\\.')}: ${why.source}`), what);
    }
  });

  test('a local layer whose manifest records another layout is not used: rebuilt', async () => {
    const a = runner([]);
    await a.both();
    const file = manifestPath(a.dir, a.plan.snapshot.base);
    const m = JSON.parse(fs.readFileSync(file, 'utf8'));
    m.layout.accel.args.push('-object', 'x');
    fs.writeFileSync(file, JSON.stringify(m));
    a.builds.length = 0;
    await a.both();
    assert.deepEqual(a.builds, ['snapshot']);
    assert.ok(said.info.some((l) => /not usable: its layout: /.test(l)), said.info.join('\n'));
  });

  test('a restored manifest keeps none of the entry\'s own extra fields', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    await ensureLayer(a.ctx, a.prepared(), a.results);
    forge(tier, a.plan.prepared.cacheKey, a.plan.prepared, (m) => void (m.evil = '$(touch /tmp/x)'));
    const b = runner([tier]);
    const m = await ensureLayer(b.ctx, b.prepared(), b.results);
    assert.deepEqual(b.builds, []);
    assert.equal((m as unknown as Record<string, unknown>).evil, undefined);
    assert.equal((readManifest(manifestPath(b.dir, b.plan.prepared.base)) as unknown as Record<string, unknown>).evil, undefined);
  });

  test('a transfer that fails is tried once more; failing twice, the layer is built', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    await ensureLayer(a.ctx, a.prepared(), a.results);
    tier.failNext = 1;
    const b = runner([tier]);
    await ensureLayer(b.ctx, b.prepared(), b.results);
    assert.deepEqual(b.builds, []);
    assert.match(said.warnings.join('\n'), /download failed; downloading it once more/);
    tier.failNext = 2;
    said.warnings = [];
    const c = runner([tier]);
    await ensureLayer(c.ctx, c.prepared(), c.results);
    assert.deepEqual(c.builds, ['prepared']);
    assert.equal(said.warnings.length, 2);
    assert.match(said.warnings[1], /building the prepared layer instead/);
  });

  test('a sparse file claiming more than a layer holds is refused before it is read', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    await ensureLayer(a.ctx, a.prepared(), a.results);
    forge(tier, a.plan.prepared.cacheKey, a.plan.prepared, (m) => void ((m.files as { size: number }[])[0].size = 2 ** 45));
    const b = runner([tier]);
    await ensureLayer(b.ctx, b.prepared(), b.results);
    assert.match(said.warnings[0], /refused: its files: they add up to 35184372088832 bytes, more than a layer of this configuration holds/);
  });

  test('pending saves: a layer a tier lacks is saved there afterwards; a snapshot only to tiers that hold its key', async () => {
    const a = runner([]);
    await a.both();
    const t1 = new MemoryTier('tier one');
    const t2 = new MemoryTier('tier two');
    const b = { ...a, ctx: { ...a.ctx, tiers: [t1, t2], pending: [], keyTiers: ['tier one'] } };
    const p = await ensureLayer(b.ctx, a.prepared(), a.results);
    await ensureLayer(b.ctx, a.snapshot(p), a.results);
    assert.equal(b.ctx.pending.length, 2);
    const saved = await syncTiers(b.ctx.pending, [t1, t2]);
    assert.deepEqual(saved.sort(), ['prepared → tier one', 'prepared → tier two', 'snapshot → tier one']);
    assert.deepEqual(await syncTiers(b.ctx.pending, [t1, t2]), [], 'asked first: nothing saved twice');
  });

  test('files an earlier tool left without a manifest are adopted when they check out, and saved', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    img('-f', 'qcow2', path.join(a.dir, a.plan.prepared.files[0]), '1M');
    const m = await ensureLayer(a.ctx, { ...a.prepared(), adopt: async () => ({}) }, a.results);
    assert.deepEqual(a.builds, []);
    assert.equal(m.layer, 'prepared');
    assert.ok(tier.entries.has(a.plan.prepared.cacheKey));
    assert.match(a.results[0].note ?? '', /adopted an unrecorded file \(saved to the memory tier\)/);
  });

  test('redownload: neither a local copy nor a tier\'s is used for a fresh layer, and the new one is saved', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    await ensureLayer(a.ctx, a.prepared(), a.results);
    const fresh = { ...a.ctx, fresh: ['prepared'] };
    await ensureLayer(fresh, a.prepared(), a.results);
    assert.deepEqual(a.builds, ['prepared', 'prepared']);
    assert.deepEqual(tier.calls.restore, [a.plan.prepared.cacheKey], 'the tier was asked only the first time');
  });

  test('the base entry wins while valid: a successor is looked at only after the base was refused', async () => {
    const tier = new MemoryTier();
    const a = runner([tier]);
    const built = await ensureLayer(a.ctx, a.prepared(), a.results);
    const key = a.plan.prepared.cacheKey;
    // Someone else writes a successor without the base being refused.
    tier.entries.set(`${key}-r1`, new Map(tier.entries.get(key)!));
    forge(tier, `${key}-r1`, a.plan.prepared, (m) => void (m.id = 'someone-else'));
    const b = runner([tier]);
    const got = await ensureLayer(b.ctx, b.prepared(), b.results);
    assert.equal(got.id, built.id);
  });
});

describe('ensure: KVM that fails its first boot falls back to TCG (ensureLayers, no guest)', () => {
  /**
   * A cache dir holding the prepared layer and the TCG snapshot the fallback plans (made here, with
   * the key ensureLayers takes from the dir), and a host whose QEMU exits at once under KVM as on a
   * host without /dev/kvm (qemu-stand-in.sh, `missing`): the KVM snapshot's build boots it, and
   * ensureLayers' loop has to catch the KvmBootError that comes out of the one ensure step.
   */
  async function kvmRunner(kvmMode: 'auto' | 'true') {
    const dir = fs.mkdtempSync(path.join(tmp, 'runner-kvm-'));
    const aside = fs.mkdtempSync(path.join(tmp, 'runner-kvm-host-'));
    const firmware = { ...host.firmware, code: path.join(aside, 'code.fd'), vars: path.join(aside, 'vars.fd'), size: 1 << 20 };
    for (const f of [firmware.code, firmware.vars]) fs.writeFileSync(f, Buffer.alloc(1 << 20));
    const qemu = qemuStandIn('missing', path.join(aside, 'bin')).qemu;
    const kvmHost: Host = { ...host, qemu: { ...host.qemu, path: qemu }, accel: accelArgs('x86_64', 'kvm'), firmware, cpuIdentity: 'Test CPU', kvmMode, identity: `test host ${kvmMode}`, accelReason: 'probe: KVM works' };
    // What fallBackToTcg makes of it (its reason line is in no key).
    const tcgHost: Host = { ...kvmHost, accel: accelArgs('x86_64', 'tcg'), cpuIdentity: 'tcg' };
    const inputs: Record<string, string> = { arch: 'amd64', 'cache-dir': dir, 'disk-size': '1G', memory: '1024', kvm: kvmMode, 'image-url': path.join(aside, 'none.qcow2'), 'image-checksum': `sha512:${'b'.repeat(128)}` };
    const config = parseConfig((n) => inputs[n], { arch: 'amd64', env: {}, homedir: '/h' });
    const { key } = await ensureSshKey(dir, []);
    const planOn = (h: Host) => planLayers(config, h, key.publicKey, recipesFor(config, 'apt'), config.imageChecksum!);
    const plan = planOn(tcgHost);
    const ctx: LayerContext = { config, host: tcgHost, image: plan.image, dir, timeouts: timeoutsFor('tcg'), tiers: [], hooks: NO_HOOKS, holder: processHolder(), pending: [] };
    const prepared = await ensureLayer(ctx, { plan: plan.prepared, build: async () => void img('-f', 'qcow2', path.join(dir, plan.prepared.files[0]), '1M') }, []);
    await ensureLayer(ctx, {
      plan: plan.snapshot,
      parentId: prepared.id,
      backing: path.join(dir, plan.prepared.files[0]),
      keyed: true,
      build: async () => {
        for (const f of plan.snapshot.files) fs.writeFileSync(path.join(dir, f), f);
        return { stateBytes: 1 };
      },
    }, []);
    const rt = fs.mkdtempSync(path.join(tmp, 'runner-kvm-rt-'));
    const run = async () => {
      const before = process.env.RYRA_VM_RUNTIME_DIR;
      process.env.RYRA_VM_RUNTIME_DIR = rt;
      said = { warnings: [], info: [] };
      try {
        return await ensureLayers(config, kvmHost, []);
      } finally {
        if (before === undefined) delete process.env.RYRA_VM_RUNTIME_DIR;
        else process.env.RYRA_VM_RUNTIME_DIR = before;
      }
    };
    return { dir, kvmHost, tcgPlan: plan, kvmPlan: planOn(kvmHost), run };
  }

  test('kvm: auto: the snapshot build\'s KVM boot fails, the run goes on under TCG once (one warning, the verdict recorded) and takes the TCG layers', async () => {
    const k = await kvmRunner('auto');
    assert.notEqual(k.kvmPlan.snapshot.key, k.tcgPlan.snapshot.key, 'the accelerator is in the snapshot key');
    const r = await k.run();
    assert.equal(r.host.accel.accel, 'tcg');
    assert.equal(r.outputs.accel, 'tcg');
    assert.equal(r.plan.snapshot.key, k.tcgPlan.snapshot.key, 'planned again for the TCG host');
    assert.deepEqual(r.layers.map((l) => `${l.layer} ${l.source}`), ['prepared local', 'snapshot local'], 'the failed KVM attempt is no layer result of the run');
    assert.equal(said.warnings.length, 1, said.warnings.join('\n'));
    assert.match(said.warnings[0], /^KVM is not used: QEMU exited at once under KVM: Could not access KVM kernel module: No such file or directory\. Falling back to TCG/);
    assert.ok(said.info.some((l) => l.startsWith(`snapshot: building ${k.kvmPlan.snapshot.base} beside the local ${k.tcgPlan.snapshot.base}, which was built with other accel, cpu`)), said.info.join('\n'));
    const verdict = readVerdict(k.dir, k.kvmHost.identity);
    assert.equal(verdict?.usable, false);
    assert.equal(verdict?.source, 'boot');
    assert.match(verdict!.reason, /^QEMU exited at once under KVM: /);
    // The failed build left nothing behind: no KVM snapshot recorded, no work dir, no lock.
    assert.equal(fs.existsSync(manifestPath(k.dir, k.kvmPlan.snapshot.base)), false);
    assert.deepEqual(fs.readdirSync(k.dir).filter((f) => f.includes('.ryra-tmp-') || f.endsWith('.lock-owner') || f.startsWith(k.kvmPlan.snapshot.base)), []);
  });

  test('kvm: true: the same failure fails the run, naming the cause and the fix; nothing falls back', async () => {
    const k = await kvmRunner('true');
    await assert.rejects(k.run(), /^Error: kvm: true, but KVM cannot run the guest here: QEMU exited at once under KVM: Could not access KVM kernel module: No such file or directory\. Fix: .*; or set kvm: auto to fall back to TCG$/);
    assert.deepEqual(said.warnings.filter((w) => /KVM is not used/.test(w)), []);
    assert.equal(readVerdict(k.dir, k.kvmHost.identity), undefined, 'no TCG verdict recorded');
    assert.equal(fs.existsSync(manifestPath(k.dir, k.kvmPlan.snapshot.base)), false);
  });
});

describe('ensure: the SSH key goes where the layers go', () => {
  const keyDir = () => fs.mkdtempSync(path.join(tmp, 'runner-key-'));

  test('a tier that lacks the key gets it; a runner on an empty disk then takes that key', async () => {
    const tier = new MemoryTier();
    const d1 = keyDir();
    const r1 = await ensureSshKey(d1, [tier]);
    assert.deepEqual(r1.keyTiers, ['memory tier']);
    assert.ok(tier.entries.has(SSH_KEY_CACHE_KEY));
    const r2 = await ensureSshKey(keyDir(), [tier]);
    assert.equal(r2.key.publicKey, r1.key.publicKey);
    assert.deepEqual(r2.keyTiers, ['memory tier']);
  });

  test('a tier that lost its entries gets the key back from a runner that kept it (every run looks)', async () => {
    const tier = new MemoryTier();
    const d1 = keyDir();
    const r1 = await ensureSshKey(d1, [tier]);
    tier.entries.clear();
    const again = await ensureSshKey(d1, [tier]);
    assert.equal(again.key.publicKey, r1.key.publicKey);
    assert.ok(tier.entries.has(SSH_KEY_CACHE_KEY), 'saved again');
  });

  test('a tier holding another key: this runner adopts it, naming the snapshots that are rebuilt', async () => {
    const tier = new MemoryTier();
    const theirs = generateKeyPair();
    const src = keyDir();
    writeKeyFiles(path.join(src, 'test-ssh-key'), theirs);
    await tier.save(SSH_KEY_CACHE_KEY, ['test-ssh-key', 'test-ssh-key.pub'], src);
    const a = runner([]);
    const mine = await ensureSshKey(a.dir, []);
    const built = runner([], mine.key.publicKey);
    // A snapshot made with this runner's own key, in its cache dir.
    fs.writeFileSync(manifestPath(a.dir, 'snap-x'), JSON.stringify({ version: 1, layer: 'snapshot', key: 'ab', inputs: { sshKey: hashOf(mine.key.publicKey.trim()) }, id: 'i1', files: [{ name: 'snap-x.qcow2', size: 1, sha256: 'a'.repeat(64) }], createdAt: 'now', buildSeconds: 1 }));
    const r = await ensureSshKey(a.dir, [tier]);
    assert.equal(r.key.publicKey.trim(), theirs.publicKey.trim());
    assert.ok(said.info.some((l) => /replaces this cache dir's; the snapshots made with the old one are rebuilt \(snap-x\)/.test(l)), said.info.join('\n'));
    assert.notEqual(built.plan.snapshot.key, runner([], r.key.publicKey).plan.snapshot.key, 'the snapshot key follows the key');
  });

  test('two tiers holding different keys: the first one\'s is used; the second gets no snapshot of this run', async () => {
    const t1 = new MemoryTier('tier one');
    const t2 = new MemoryTier('tier two');
    for (const t of [t1, t2]) {
      const src = keyDir();
      writeKeyFiles(path.join(src, 'test-ssh-key'), generateKeyPair());
      await t.save(SSH_KEY_CACHE_KEY, ['test-ssh-key', 'test-ssh-key.pub'], src);
    }
    const r = await ensureSshKey(keyDir(), [t1, t2]);
    assert.deepEqual(r.keyTiers, ['tier one']);
    assert.match(said.warnings.join('\n'), /the tier two holds another key than the tier one/);
  });

  test('a key entry that is not one valid pair is refused naming the key, and this runner\'s key is saved under a successor', async () => {
    const tier = new MemoryTier();
    tier.entries.set(SSH_KEY_CACHE_KEY, new Map([['test-ssh-key', Buffer.from('#!/bin/sh\n')], ['test-ssh-key.pub', Buffer.from('ssh-ed25519 AAAA x\n')]]));
    const r = await ensureSshKey(keyDir(), [tier]);
    assert.match(said.warnings[0], /refused: its key: /);
    assert.deepEqual(r.keyTiers, ['memory tier']);
    assert.ok(tier.entries.has(`${SSH_KEY_CACHE_KEY}-r1`));
    void cachePaths;
  });
});

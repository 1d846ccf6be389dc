// A snapshot built anew beside a local one of another key (another QEMU, CPU, SSH key): the file
// name carries the key, so nothing else would say why. The line names the inputs that differ; it
// compares only layers of the same kind, distro/arch and memory, the most recently used first; and
// the one ensure step says it when it builds (with no QEMU: the build writes its files).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { processHolder } from '../../src/cache/local.js';
import type { Manifest } from '../../src/cache/manifest.js';
import { NO_HOOKS } from '../../src/env.js';
import { accelArgs } from '../../src/host/platform.js';
import type { Host } from '../../src/host/setup.js';
import { parseConfig } from '../../src/inputs.js';
import { log, setLogger, type Logger } from '../../src/log.js';
import { manifestPath } from '../../src/names.js';
import { timeoutsFor, type LayerContext } from '../../src/layers/context.js';
import { localBuilds, otherBuildLine } from '../../src/layers/drift.js';
import { ensureLayer, type LayerSpec } from '../../src/layers/ensure.js';
import { recipesFor } from '../../src/layers/pipeline.js';
import { planLayers, type LayerPlan } from '../../src/layers/plan.js';
import type { LayerResult } from '../../src/record.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'snapshot-drift-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const host = (qemu: string, cpuIdentity = 'tcg'): Host => ({
  qemuArch: 'x86_64',
  qemu: { binary: 'qemu-system-x86_64', path: '/usr/bin/qemu-system-x86_64', version: qemu, machine: 'pc-q35-7.2' },
  accel: accelArgs('x86_64', 'tcg'),
  firmware: { code: '/fw/code.fd', vars: '/fw/vars.fd', format: 'raw', source: 'known path', size: 4 << 20 },
  cpuIdentity,
  kvmMode: 'false',
  identity: 'test host',
  accelReason: 'kvm: false',
});

function planFor(dir: string, h: Host, memory = '1024', publicKey = 'ssh-ed25519 AAAA test') {
  const inputs: Record<string, string> = { arch: 'amd64', 'cache-dir': dir, 'disk-size': '1G', memory };
  const config = parseConfig((n) => inputs[n], { arch: 'amd64', env: {}, homedir: '/h' });
  return { config, plan: planLayers(config, h, publicKey, recipesFor(config, 'apt'), { algorithm: 'sha512', hex: 'b'.repeat(128) }) };
}

/** The manifest a build of `p` records (only the fields the comparison reads matter). */
const built = (p: LayerPlan): Manifest => ({
  version: 1,
  layer: p.layer,
  key: p.key,
  inputs: p.inputs,
  id: `build-of-${p.base}`,
  files: p.files.map((name) => ({ name, size: 1, sha256: 'a'.repeat(64) })),
  createdAt: new Date(0).toISOString(),
  buildSeconds: 1,
});
const local = (p: LayerPlan) => ({ base: p.base, manifest: built(p) });

describe('snapshot drift: the line', () => {
  const old = planFor(tmp, host('7.2.0')).plan;
  const now = planFor(tmp, host('8.2.2', 'host:AMD EPYC')).plan;

  test('another QEMU and CPU: the line names both inputs, old value then new, and both layers', () => {
    assert.notEqual(old.snapshot.base, now.snapshot.base, 'the file name carries the key');
    const line = otherBuildLine(now.snapshot, [local(old.snapshot)]);
    assert.equal(
      line,
      `snapshot: building ${now.snapshot.base} beside the local ${old.snapshot.base}, which was built with other qemu, cpu ("7.2.0" ≠ "8.2.2"; "tcg" ≠ "host:AMD EPYC")`,
    );
  });

  test('another SSH key: named as sshKey', () => {
    const other = planFor(tmp, host('8.2.2', 'host:AMD EPYC'), '1024', 'ssh-ed25519 BBBB other').plan;
    assert.match(otherBuildLine(now.snapshot, [local(other.snapshot)])!, /which was built with other sshKey \(/);
  });

  test('the browser snapshot is compared with browser snapshots only', () => {
    assert.match(otherBuildLine(now.browserSnapshot, [local(old.snapshot), local(old.browserSnapshot)])!, /^browser-snapshot: building .* beside the local .*-snapshot-1024-[0-9a-f]{12}, which was built with other qemu, cpu/);
    assert.equal(otherBuildLine(now.browserSnapshot, [local(old.snapshot)]), undefined);
  });

  test('nothing to say: no other layer, another memory size, the same key, another kind of layer', () => {
    const other2048 = planFor(tmp, host('7.2.0'), '2048').plan;
    assert.equal(otherBuildLine(now.snapshot, []), undefined);
    assert.equal(otherBuildLine(now.snapshot, [local(other2048.snapshot)]), undefined, 'another memory size is another layer, not a drift');
    assert.equal(otherBuildLine(now.snapshot, [local(now.snapshot)]), undefined);
    assert.equal(otherBuildLine(now.snapshot, [{ base: old.snapshot.base, manifest: { ...built(old.snapshot), layer: 'prepared' } }]), undefined);
  });

  test('several: the first given (the most recently used) is the one compared', () => {
    const mid = planFor(tmp, host('8.0.0', 'host:AMD EPYC')).plan;
    assert.match(otherBuildLine(now.snapshot, [local(mid.snapshot), local(old.snapshot)])!, /other qemu \("8\.0\.0" ≠ "8\.2\.2"\)$/);
  });
});

describe('snapshot drift: the cache dir', () => {
  test('local builds: same name prefix only, the most recently used first, not the plan\'s own, unreadable manifests skipped', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'dir-'));
    const plans = ['7.0.0', '7.1.0', '7.2.0'].map((v) => planFor(dir, host(v)).plan.snapshot);
    const now = planFor(dir, host('8.2.2')).plan;
    const write = (p: LayerPlan, usedS: number) => {
      const f = manifestPath(dir, p.base);
      fs.writeFileSync(f, JSON.stringify(built(p)));
      fs.utimesSync(f, usedS, usedS);
    };
    write(plans[0], 1000);
    write(plans[1], 3000);
    write(plans[2], 2000);
    write(now.snapshot, 4000);
    write(planFor(dir, host('7.2.0'), '2048').plan.snapshot, 5000);
    fs.writeFileSync(manifestPath(dir, `${now.snapshot.base.slice(0, -12)}${'f'.repeat(12)}`), '{');
    assert.deepEqual(localBuilds(dir, now.snapshot).map((b) => b.base), [plans[1].base, plans[2].base, plans[0].base]);
    assert.match(otherBuildLine(now.snapshot, localBuilds(dir, now.snapshot))!, /other qemu \("7\.1\.0" ≠ "8\.2\.2"\)$/);
  });

  test('the ensure step says it once when it builds a snapshot beside another QEMU\'s, and not when it uses its own', async () => {
    const said: string[] = [];
    const original = log;
    const l: Logger = { info: (m) => said.push(m), warning: (m) => said.push(`warning: ${m}`), error: () => {}, debug: () => {}, group: (_n, fn) => fn() };
    setLogger(l);
    try {
      const dir = fs.mkdtempSync(path.join(tmp, 'ensure-'));
      const ensure = async (h: Host) => {
        const { config, plan } = planFor(dir, h);
        const ctx: LayerContext = { config, host: h, image: plan.image, dir, timeouts: timeoutsFor('tcg'), tiers: [], hooks: NO_HOOKS, holder: processHolder(), pending: [] };
        const spec: LayerSpec = {
          plan: plan.snapshot,
          parentId: 'the-prepared-build',
          backing: path.join(dir, plan.prepared.files[0]),
          build: async () => {
            for (const f of plan.snapshot.files) fs.writeFileSync(path.join(dir, f), f);
          },
        };
        const results: LayerResult[] = [];
        await ensureLayer(ctx, spec, results);
        return { plan, source: results[0].source };
      };
      const first = await ensure(host('7.2.0'));
      assert.equal(first.source, 'built');
      assert.deepEqual(said.filter((s) => s.includes('beside')), [], 'nothing here before: nothing to say');
      assert.equal((await ensure(host('7.2.0'))).source, 'local');
      said.length = 0;
      const second = await ensure(host('8.2.2'));
      assert.equal(second.source, 'built');
      assert.deepEqual(said.filter((s) => s.includes('beside')), [
        `snapshot: building ${second.plan.snapshot.base} beside the local ${first.plan.snapshot.base}, which was built with other qemu ("7.2.0" ≠ "8.2.2")`,
      ]);
    } finally {
      setLogger(original);
    }
  });
});

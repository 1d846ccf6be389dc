// Side-by-side figures from one run on the host-arch test image (TCG unless RYRA_BENCH_KVM=auto):
// cold boot → SSH vs snapshot restore → SSH, the pipeline's savevm step vs QEMU's own savevm, the
// saved RAM state with and without zeroing free memory, and the all-valid rerun's wall time.
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setupHost } from '../src/host/setup.js';
import { parseConfig } from '../src/inputs.js';
import { ensureLayers } from '../src/layers/pipeline.js';
import { timeoutsFor } from '../src/layers/context.js';
import { bootBuilder } from '../src/layers/guest.js';
import { buildSnapshot } from '../src/layers/snapshot.js';
import { restoreMachine } from '../src/vm/boot.js';
import { plainLogger, setLogger } from '../src/log.js';
import { distroImage } from '../src/distro.js';
import { generateKeyPair } from '../src/vm/ssh.js';
import { ensureFixture } from '../test/support/fixtures.js';
import { startCacheServer } from '../test/support/cache-server.js';
import { actionsCache } from '../src/cache/actions.js';

setLogger(plainLogger());
const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-bench-'));
const rows: [string, string][] = [];
const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const mib = (b: number) => `${(b / 1048576).toFixed(0)} MiB`;

try {
  const fx = ensureFixture(arch);
  const server = await startCacheServer({ dir: root });
  Object.assign(process.env, server.env('v2'), { RUNNER_TEMP: path.join(root, 'runner') });
  fs.mkdirSync(process.env.RUNNER_TEMP!, { recursive: true });
  process.env.RYRA_VM_BASE_PACKAGES = ''; // jq only: the figures are about boots and snapshots
  process.env.RYRA_VM_RUNTIME_DIR = path.join(root, 'rt');
  const inputs: Record<string, string> = {
    arch,
    kvm: process.env.RYRA_BENCH_KVM ?? 'false',
    memory: '2048',
    packages: 'jq libpam-systemd',
    'image-url': fx.image,
    'image-checksum': fx.checksum,
    'cache-dir': path.join(root, 'cache'),
    'install-deps': 'false',
  };
  const config = parseConfig((n) => inputs[n]);
  const host = await setupHost(config);

  // Run 1: an empty runner builds every layer and saves it; run 2: another empty runner restores.
  const t00 = Date.now();
  const cold = await ensureLayers(config, host);
  const run1Ms = Date.now() - t00;
  const snap = cold.snapshotBuild!;
  const t0 = Date.now();
  await ensureLayers(config, host);
  const rerunMs = Date.now() - t0;
  const t01 = Date.now();
  const run2 = await ensureLayers({ ...config, cacheDir: path.join(root, 'cache2') }, host);
  const run2Ms = Date.now() - t01;
  assert.deepEqual(run2.layers.map((l) => l.source), ['actions cache', 'actions cache'], 'run 2 restores prepared and snapshot');

  const ctx = { config, host, image: distroImage(config.distro, arch), dir: config.cacheDir, timeouts: timeoutsFor(host.accel.accel) };
  const key = { privateKey: fs.readFileSync(cold.outputs['ssh-key'], 'utf8'), publicKey: cold.outputs['ssh-public-key'] };

  // The same snapshot without zeroing free memory first, for the state size.
  const plain = path.join(root, 'plain');
  fs.mkdirSync(plain);
  const unshrunk = await buildSnapshot(ctx, {
    name: 'bench-unshrunk',
    base: cold.outputs.image,
    out: { disk: path.join(plain, 'd.qcow2'), efivars: path.join(plain, 'e.qcow2'), seed: path.join(plain, 's.iso') },
    key,
    memoryMb: config.memoryMb,
    cpus: config.cpus,
    shrink: false,
  });

  // Cold boot of the prepared image to SSH vs restore of its snapshot to SSH, back to back.
  const coldDir = fs.mkdtempSync(path.join(root, 'cold-'));
  const t1 = Date.now();
  const m = await bootBuilder(ctx, {
    name: 'bench-cold',
    base: cold.outputs.image,
    workDir: coldDir,
    key: generateKeyPair(),
    memoryMb: config.memoryMb,
    cpus: config.cpus,
    seed: { hostname: 'bench' },
    sshTimeoutMs: ctx.timeouts.bootSshMs,
    cloudInitTimeoutMs: ctx.timeouts.bootSshMs,
  });
  const coldMs = Date.now() - t1;
  await m.destroy();
  const restoreDir = fs.mkdtempSync(path.join(root, 'restore-'));
  const t2 = Date.now();
  const r = await restoreMachine({
    name: 'bench-restore',
    qemu: host.qemu.path,
    efiCode: host.firmware.code,
    files: { disk: cold.outputs['snapshot-disk'], efivars: cold.outputs['snapshot-efivars'], seed: cold.outputs['snapshot-seed-iso'] },
    backing: cold.outputs.image,
    layout: cold.snapshotBuild!.layout,
    workDir: restoreDir,
    key,
    sshTimeoutMs: ctx.timeouts.restoreSshMs,
  });
  const restoreMs = Date.now() - t2;
  await r.machine.destroy();

  // The prepared layer through the Actions cache service (real toolkit, local service) vs plain
  // tar + zstd -d of the very archive the service stored.
  const cache = actionsCache();
  const names = [path.basename(cold.outputs.image), path.basename(cold.outputs.image).replace(/\.qcow2$/, '.manifest.json')];
  await cache.save('bench-prepared', names, config.cacheDir);
  const via = fs.mkdtempSync(path.join(root, 'via-'));
  const t3 = Date.now();
  assert(await cache.restore('bench-prepared', names, via), 'restore through the cache service');
  const viaMs = Date.now() - t3;
  const blob = fs.readdirSync(server.storageDir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name)).sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0];
  const plainDir = fs.mkdtempSync(path.join(root, 'tar-'));
  const t4 = Date.now();
  execFileSync('tar', ['--use-compress-program', 'zstd -d', '-xf', blob, '-C', plainDir]);
  const tarMs = Date.now() - t4;
  const archiveBytes = fs.statSync(blob).size;
  await server.close();

  rows.push(
    ['accelerator', host.accel.accel],
    ['cold boot of the prepared image → SSH + cloud-init', s(coldMs)],
    ['snapshot restore → SSH', s(restoreMs)],
    ['ratio cold / restore', `${(coldMs / restoreMs).toFixed(1)}×`],
    ['pipeline savevm step (shrink + savevm + check)', s(snap.stepMs)],
    ["QEMU's own savevm (QMP round trip)", s(snap.savevmMs)],
    ['ratio step / savevm', `${(snap.stepMs / snap.savevmMs).toFixed(1)}×`],
    ['RAM state, free memory zeroed', mib(snap.stateBytes)],
    ['RAM state, as is', mib(unshrunk.stateBytes)],
    ['ratio as is / zeroed', `${(unshrunk.stateBytes / snap.stateBytes).toFixed(2)}×`],
    ['all-valid rerun wall time', s(rerunMs)],
    ['run 1: empty runner, builds and saves every layer', s(run1Ms)],
    ['run 2: another empty runner, restores from the cache', s(run2Ms)],
    ['ratio run 1 / run 2', `${(run1Ms / run2Ms).toFixed(1)}×`],
    [`prepared layer (${mib(archiveBytes)} archive) restored via the cache service`, s(viaMs)],
    ['the same archive with plain tar + zstd -d', s(tarMs)],
    ['ratio service / plain', `${(viaMs / tarMs).toFixed(2)}×`],
  );
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log(`\nryra-vm bench (${arch}, ${config.memoryMb} MiB, ${host.accel.accel})`);
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
process.exit(0);

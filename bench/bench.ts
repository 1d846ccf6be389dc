// Side-by-side figures from one run on the host-arch test image (TCG unless RYRA_BENCH_KVM=auto):
// cold boot → SSH vs snapshot restore → SSH, the pipeline's savevm step vs QEMU's own savevm, the
// saved RAM state with and without zeroing free memory, and the all-valid rerun's wall time.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setupHost } from '../src/host/setup.js';
import { parseConfig } from '../src/inputs.js';
import { ensureLayers } from '../src/layers/pipeline.js';
import { timeoutsFor } from '../src/layers/context.js';
import { bootBuilder } from '../src/layers/guest.js';
import { buildSnapshot, restoreMachine } from '../src/layers/snapshot.js';
import { plainLogger, setLogger } from '../src/log.js';
import { distroImage } from '../src/distro.js';
import { generateKeyPair } from '../src/vm/ssh.js';
import { ensureFixture } from '../test/support/fixtures.js';

setLogger(plainLogger());
const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-bench-'));
const rows: [string, string][] = [];
const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const mib = (b: number) => `${(b / 1048576).toFixed(0)} MiB`;

try {
  const fx = ensureFixture(arch);
  process.env.RYRA_VM_BASE_PACKAGES = ''; // jq only: the figures are about boots and snapshots
  process.env.RYRA_VM_RUNTIME_DIR = path.join(root, 'rt');
  const inputs: Record<string, string> = {
    arch,
    kvm: process.env.RYRA_BENCH_KVM ?? 'false',
    memory: '2048',
    packages: 'jq',
    'image-url': fx.image,
    'image-checksum': fx.checksum,
    'cache-dir': path.join(root, 'cache'),
    cache: 'false',
    'install-deps': 'false',
  };
  const config = parseConfig((n) => inputs[n]);
  const host = await setupHost(config);

  const cold = await ensureLayers(config, host);
  const snap = cold.snapshotBuild!;
  const t0 = Date.now();
  await ensureLayers(config, host);
  const rerunMs = Date.now() - t0;

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
    ['cold pipeline run (raw + prepared + snapshot)', s(cold.layers.reduce((n, l) => n + l.seconds * 1000, 0))],
  );
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log(`\nryra-vm bench (${arch}, ${config.memoryMb} MiB, ${host.accel.accel})`);
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
process.exit(0);

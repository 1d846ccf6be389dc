// Boots a guest for building a layer: overlay disk, qcow2 UEFI vars and a seed in a private work
// dir, then SSH and cloud-init. The one way layers start VMs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log } from '../log.js';
import { convert, createOverlay } from '../vm/images.js';
import { GuestPanicError, Machine } from '../vm/machine.js';
import { writeSeedIso, type SeedOptions } from '../vm/seed.js';
import type { KeyPair } from '../vm/ssh.js';
import type { LayerContext } from './context.js';

export interface BuilderGuest {
  name: string;
  /** Image the overlay sits on. */
  base: string;
  workDir: string;
  key: KeyPair;
  memoryMb: number;
  cpus: number;
  diskSize?: string;
  seed: Omit<SeedOptions, 'publicKey'>;
  share?: { path: string; tag: string };
  sshTimeoutMs: number;
  cloudInitTimeoutMs: number;
}

export const GUEST_FILES = { disk: 'disk.qcow2', efivars: 'efivars.qcow2', seed: 'seed.iso' } as const;

/**
 * Boots a builder guest; a cold boot whose kernel panicked is tried once more from scratch
 * (multi-threaded TCG on QEMU 7.2 can race with the kernel patching its own code at boot:
 * `Oops: int3` in sched_clock_tick, seen here on x86_64 guests under load).
 */
export async function bootBuilder(ctx: LayerContext, g: BuilderGuest): Promise<Machine> {
  try {
    return await bootOnce(ctx, g);
  } catch (err) {
    if (!(err instanceof GuestPanicError)) throw err;
    log.warning(`${g.name}: ${err.message.split('\n')[0]}; booting once more`);
    return bootOnce(ctx, g);
  }
}

async function bootOnce(ctx: LayerContext, g: BuilderGuest): Promise<Machine> {
  const disk = path.join(g.workDir, GUEST_FILES.disk);
  const efiVars = path.join(g.workDir, GUEST_FILES.efivars);
  const seedIso = path.join(g.workDir, GUEST_FILES.seed);
  fs.rmSync(disk, { force: true });
  await createOverlay(path.resolve(g.base), disk, { size: g.diskSize ?? '20G' });
  await convert(ctx.host.firmware.vars, efiVars, { srcFormat: ctx.host.firmware.format });
  writeSeedIso(seedIso, { ...g.seed, publicKey: g.key.publicKey });
  const vmDir = path.join(g.workDir, 'vm');
  fs.mkdirSync(vmDir, { recursive: true });
  const m = await Machine.spawn({
    qemu: ctx.host.qemu.path,
    arch: ctx.host.qemuArch,
    machine: ctx.host.qemu.machine,
    accel: ctx.host.accel,
    memoryMb: g.memoryMb,
    cpus: g.cpus,
    firmwareFormat: ctx.host.firmware.format,
    seed: true,
    shareTag: g.share?.tag,
    sharePath: g.share?.path,
    name: g.name,
    efiCode: ctx.host.firmware.code,
    efiVars,
    disk,
    seedIso,
    workDir: vmDir,
    user: 'ryra',
    privateKey: g.key.privateKey,
  });
  try {
    log.info(`  ${g.name}: QEMU pid ${m.pid}, ssh 127.0.0.1:${m.sshPort}, serial log ${m.spec.serialLog}`);
    const ms = await m.waitReady(g.sshTimeoutMs);
    log.info(`  ${g.name}: SSH ready after ${(ms / 1000).toFixed(1)} s; waiting for cloud-init`);
    const warning = await m.waitCloudInit(g.cloudInitTimeoutMs);
    if (warning) log.warning(warning);
    return m;
  } catch (err) {
    await m.destroy();
    throw err;
  }
}

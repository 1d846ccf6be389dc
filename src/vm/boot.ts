// The two ways a guest is started, shared by the layer builders, the CLI's `boot` and the tests:
// a cold boot of an image (overlay disk, fresh UEFI vars, cloud-init seed) and a restore of a
// saved snapshot under its recorded layout. Each returns a Machine that answers SSH.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GUEST_USER } from '../distro.js';
import type { AccelChoice, QemuArch } from '../host/platform.js';
import { log } from '../log.js';
import { convert, copyFile, createOverlay, rebaseUnsafe } from './images.js';
import { GuestPanicError, Machine, type MachineOptions } from './machine.js';
import { writeSeedIso, type SeedOptions } from './seed.js';
import type { VmLayout } from './spec.js';
import type { KeyPair } from './ssh.js';

/** The internal snapshot every snapshot layer saves and every restore loads. */
export const SNAPSHOT_TAG = 'ready';

/** File names inside a guest's work dir. */
export const GUEST_FILES = { disk: 'disk.qcow2', efivars: 'efivars.qcow2', seed: 'seed.iso' } as const;

/** Starts QEMU with its own `vm/` dir under `workDir`, runs `ready`; a guest that never gets there is destroyed. */
async function startIn<T>(workDir: string, opts: Omit<MachineOptions, 'workDir'>, ready: (m: Machine) => Promise<T>): Promise<T> {
  const vmDir = path.join(workDir, 'vm');
  fs.rmSync(vmDir, { recursive: true, force: true });
  fs.mkdirSync(vmDir, { recursive: true });
  const m = await Machine.spawn({ ...opts, workDir: vmDir });
  try {
    return await ready(m);
  } catch (err) {
    await m.destroy();
    throw err;
  }
}

export interface ColdBootOptions {
  name: string;
  qemu: string;
  arch: QemuArch;
  /** Versioned machine type. */
  machine: string;
  accel: AccelChoice;
  firmware: { code: string; vars: string; format: 'raw' | 'qcow2' };
  memoryMb: number;
  cpus: number;
  /** Image the overlay disk sits on. */
  base: string;
  /** Holds the disk, vars, seed and the machine's own `vm/` dir. */
  workDir: string;
  diskSize?: string;
  key: KeyPair;
  user?: string;
  seed: Omit<SeedOptions, 'publicKey'>;
  share?: { path: string; tag: string };
  sshTimeoutMs: number;
  cloudInitTimeoutMs: number;
  /** Keep QEMU running after this process exits. */
  detached?: boolean;
}

/**
 * Cold-boots an image to SSH and a finished cloud-init. A boot whose kernel panicked is tried once
 * more from a fresh overlay (multi-threaded TCG on QEMU 7.2 can race with the kernel patching its
 * own code at boot: `Oops: int3` in sched_clock_tick, seen here on x86_64 guests under load).
 */
export async function coldBoot(o: ColdBootOptions): Promise<Machine> {
  try {
    return await coldBootOnce(o);
  } catch (err) {
    if (!(err instanceof GuestPanicError)) throw err;
    log.warning(`${o.name}: ${err.message.split('\n')[0]}; booting once more`);
    return coldBootOnce(o);
  }
}

async function coldBootOnce(o: ColdBootOptions): Promise<Machine> {
  const disk = path.join(o.workDir, GUEST_FILES.disk);
  const efiVars = path.join(o.workDir, GUEST_FILES.efivars);
  const seedIso = path.join(o.workDir, GUEST_FILES.seed);
  fs.rmSync(disk, { force: true });
  await createOverlay(path.resolve(o.base), disk, { size: o.diskSize ?? '20G' });
  await convert(o.firmware.vars, efiVars, { srcFormat: o.firmware.format });
  writeSeedIso(seedIso, { ...o.seed, publicKey: o.key.publicKey, user: o.user });
  return startIn(
    o.workDir,
    {
      qemu: o.qemu,
      arch: o.arch,
      machine: o.machine,
      accel: o.accel,
      memoryMb: o.memoryMb,
      cpus: o.cpus,
      firmwareFormat: o.firmware.format,
      seed: true,
      shareTag: o.share?.tag,
      sharePath: o.share?.path,
      name: o.name,
      efiCode: o.firmware.code,
      efiVars,
      disk,
      seedIso,
      user: o.user ?? GUEST_USER,
      privateKey: o.key.privateKey,
      detached: o.detached,
    },
    async (m) => {
      log.info(`  ${o.name}: QEMU pid ${m.pid}, ssh 127.0.0.1:${m.sshPort}, serial log ${m.spec.serialLog}`);
      const ms = await m.waitReady(o.sshTimeoutMs);
      log.info(`  ${o.name}: SSH ready after ${(ms / 1000).toFixed(1)} s; waiting for cloud-init`);
      const warning = await m.waitCloudInit(o.cloudInitTimeoutMs);
      if (warning) log.warning(warning);
      return m;
    },
  );
}

export interface RestoreOptions {
  name: string;
  qemu: string;
  efiCode: string;
  /** The snapshot layer's files; disk and vars are copied (reflinks where the filesystem can). */
  files: { disk: string; efivars: string; seed: string };
  /** The image the snapshot's disk overlay sits on. */
  backing: string;
  /** The layout recorded when the snapshot was saved: the restore argv is rebuilt from it. */
  layout: VmLayout;
  workDir: string;
  key: KeyPair;
  user?: string;
  sshTimeoutMs: number;
  sharePath?: string;
  detached?: boolean;
}

/** Restores a snapshot's disk + vars copy into `workDir` and waits for SSH. */
export async function restoreMachine(o: RestoreOptions): Promise<{ machine: Machine; readyMs: number }> {
  const disk = path.join(o.workDir, GUEST_FILES.disk);
  const efiVars = path.join(o.workDir, GUEST_FILES.efivars);
  copyFile(o.files.disk, disk);
  copyFile(o.files.efivars, efiVars);
  // The copy's relative backing path no longer points at the base: point it there (header only).
  await rebaseUnsafe(disk, path.resolve(o.backing));
  // The share is part of the saved device layout; on a runner that restored the layers it may not exist yet.
  const sharePath = o.layout.shareTag ? (o.sharePath ?? path.join(o.workDir, 'share')) : undefined;
  if (sharePath) fs.mkdirSync(sharePath, { recursive: true });
  return startIn(
    o.workDir,
    {
      ...o.layout,
      qemu: o.qemu,
      name: o.name,
      efiCode: o.efiCode,
      efiVars,
      disk,
      seedIso: o.files.seed,
      sharePath,
      loadvm: SNAPSHOT_TAG,
      user: o.user ?? GUEST_USER,
      privateKey: o.key.privateKey,
      detached: o.detached,
    },
    async (machine) => ({ machine, readyMs: await machine.waitReady(o.sshTimeoutMs, `SSH on restored ${o.name}`) }),
  );
}

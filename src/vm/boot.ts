// The two ways a guest is started, shared by the layer builders, the CLI and the tests: a cold
// boot of an image (overlay disk, fresh UEFI vars, cloud-init seed) and a restore of a saved
// snapshot from its recipe. Each returns a Machine that answers SSH.
import type { Phases } from '../util/phases.js';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GUEST_USER } from '../distro.js';
import { log } from '../log.js';
import { GuestFiles } from '../names.js';
import { convert, copyFile, createOverlay, rebaseUnsafe } from './images.js';
import { GuestPanicError, GuestStalledError, Machine, QemuExitedError } from './machine.js';
import { writeSeedIso, type SeedOptions } from './seed.js';
import { recipe, withForwards, type Forward, type VmLayout } from './spec.js';
import { hostKeyFor, type KeyPair } from './ssh.js';

/** The internal snapshot every snapshot layer saves and every restore loads. */
export const SNAPSHOT_TAG = 'ready';

/** A guest under KVM that printed nothing for this long before SSH answered has stalled. */
export const KVM_STALL_MS = 60_000;

/** A boot under KVM failed before the guest answered: QEMU exited early, or the guest stalled. */
export class KvmBootError extends Error {
  override name = 'KvmBootError';
  constructor(
    /** One line: what happened, for the warning and the verdict record. */
    readonly cause: string,
    readonly detail: string,
  ) {
    super(`${cause}\n${detail}`);
  }
}

export interface ColdBootOptions {
  name: string;
  qemu: string;
  /** Device layout; `seed` must be true (a cold boot always gets a cloud-init seed). */
  layout: VmLayout;
  firmware: { code: string; vars: string };
  /** Image the overlay disk sits on. */
  base: string;
  /** Holds the disk, vars, seed, serial log and QEMU's files. */
  workDir: string;
  diskSize?: string;
  key: KeyPair;
  /** The guest's SSH host key: the seed installs it and every connection pins it. */
  hostKey: KeyPair;
  user?: string;
  seed: Omit<SeedOptions, 'publicKey' | 'hostKey'>;
  /** The share's directory, when the layout has one. */
  shareDir?: string;
  sshTimeoutMs: number;
  cloudInitTimeoutMs: number;
  /** Keep QEMU running after this process exits. */
  detached?: boolean;
  /** The disk is a build's scratch overlay (no savevm): host flushes are skipped. */
  scratchDisk?: boolean;
  /** TCP forwards from the host's loopback, beside SSH's. */
  forwards?: Forward[];
  /** Under KVM, how long the guest may print nothing before it counts as stalled (KVM_STALL_MS). */
  stallMs?: number;
}

/**
 * Cold-boots an image to SSH and a finished cloud-init. A boot whose kernel panicked is tried once
 * more from a fresh overlay (multi-threaded TCG on QEMU 7.2 can race with the kernel patching its
 * own code at boot: `Oops: int3` in sched_clock_tick, seen here on x86_64 guests under load).
 * Under KVM, a QEMU that exits before SSH answers or a guest that stops printing is a KvmBootError.
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
  const disk = path.join(o.workDir, GuestFiles.disk);
  const efivars = path.join(o.workDir, GuestFiles.efivars);
  const seedIso = path.join(o.workDir, GuestFiles.seed);
  fs.mkdirSync(o.workDir, { recursive: true });
  for (const f of [disk, efivars]) fs.rmSync(f, { force: true });
  await createOverlay(path.resolve(o.base), disk, { size: o.diskSize ?? '20G' });
  await convert(o.firmware.vars, efivars, { srcFormat: o.layout.firmwareFormat });
  writeSeedIso(seedIso, { ...o.seed, publicKey: o.key.publicKey, hostKey: o.hostKey, user: o.user });
  const kvm = o.layout.accel.accel === 'kvm';
  const m = await Machine.spawn({
    qemu: o.qemu,
    name: o.name,
    workDir: machineDir(o.workDir),
    recipe: withForwards(recipe(o.layout, { efiCode: o.firmware.code, seedIso }, { scratchDisk: o.scratchDisk }), o.forwards ?? []),
    disk,
    efivars,
    shareDir: o.shareDir,
    user: o.user ?? GUEST_USER,
    privateKey: o.key.privateKey,
    hostKey: o.hostKey.publicKey,
    detached: o.detached,
  }).catch((err) => {
    throw kvm && err instanceof QemuExitedError ? new KvmBootError(`QEMU exited at once under KVM: ${firstLine(err.message.replace(/^QEMU failed to start [^:]*: /, ''))}`, err.message) : err;
  });
  try {
    log.info(`  ${o.name}: QEMU pid ${m.pid}, ssh 127.0.0.1:${m.sshPort}, serial log ${m.serialLog}`);
    let ms: number;
    try {
      ms = await m.waitReady(o.sshTimeoutMs, { stallMs: kvm ? (o.stallMs ?? KVM_STALL_MS) : undefined });
    } catch (err) {
      if (kvm && err instanceof QemuExitedError) throw new KvmBootError(`QEMU exited under KVM before the guest answered SSH: ${m.stderrLine() || firstLine(err.message)}`, err.message);
      if (kvm && err instanceof GuestStalledError) throw new KvmBootError(`the guest made no progress under KVM: ${err.message}`, m.diagnostics());
      throw err;
    }
    log.info(`  ${o.name}: SSH ready after ${(ms / 1000).toFixed(1)} s; waiting for cloud-init`);
    const warning = await m.waitCloudInit(o.cloudInitTimeoutMs);
    if (warning) log.warning(warning);
    return m;
  } catch (err) {
    await m.destroy();
    throw err;
  }
}

/** QEMU's own files (serial log, pid, stderr) sit in `vm/` beside the disks; destroy() removes only that. */
function machineDir(workDir: string): string {
  const dir = path.join(workDir, 'vm');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function firstLine(s: string): string {
  return s.split('\n').find((l) => l.trim())?.trim() ?? s;
}

export interface RestoreOptions {
  name: string;
  qemu: string;
  /** The snapshot's recipe (its seed ISO and firmware named in it). */
  recipe: readonly string[];
  /** The snapshot layer's disk and vars: copied (reflinks where the filesystem can). */
  files: { disk: string; efivars: string };
  /** The image the snapshot's disk overlay sits on. */
  backing: string;
  workDir: string;
  /** The key the snapshot accepts; the guest's host key is derived from it (hostKeyFor). */
  key: KeyPair;
  user?: string;
  sshTimeoutMs: number;
  /** The share's directory; default: a `share` dir in the work dir. */
  shareDir?: string;
  detached?: boolean;
  /** TCP forwards from the host's loopback, beside SSH's (any: they are not part of the saved state). */
  forwards?: Forward[];
  /** Marks the restore's phases (the bench's fresh-step rows). */
  phases?: Phases;
}

/** Restores a snapshot's disk + vars copy into `workDir` and waits for SSH. */
export async function restoreMachine(o: RestoreOptions): Promise<{ machine: Machine; readyMs: number }> {
  fs.mkdirSync(o.workDir, { recursive: true });
  const disk = path.join(o.workDir, GuestFiles.disk);
  const efivars = path.join(o.workDir, GuestFiles.efivars);
  copyFile(o.files.disk, disk);
  copyFile(o.files.efivars, efivars);
  // Header only: the copy's backing path is made the base's, wherever the cache dir sits now.
  await rebaseUnsafe(disk, path.resolve(o.backing));
  // The share is part of the saved device layout; on a runner that restored the layers it may not exist yet.
  const shareDir = o.shareDir ?? path.join(o.workDir, GuestFiles.share);
  fs.mkdirSync(shareDir, { recursive: true });
  o.phases?.mark('disk copies');
  const machine = await Machine.spawn({
    qemu: o.qemu,
    name: o.name,
    workDir: machineDir(o.workDir),
    recipe: withForwards(o.recipe, o.forwards ?? []),
    disk,
    efivars,
    shareDir,
    loadvm: SNAPSHOT_TAG,
    user: o.user ?? GUEST_USER,
    privateKey: o.key.privateKey,
    // The snapshot's sshd holds the host key its seed gave it: the one derived from its key.
    hostKey: hostKeyFor(o.key).publicKey,
    detached: o.detached,
  });
  o.phases?.mark('QEMU start');
  try {
    const readyMs = await machine.waitReady(o.sshTimeoutMs, { label: `SSH on restored ${o.name}`, restored: true });
    o.phases?.mark('state load → SSH');
    return { machine, readyMs };
  } catch (err) {
    await machine.destroy();
    throw err;
  }
}

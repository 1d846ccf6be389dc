// Turns a Config into the host facts every QEMU command needs, installing what is missing first,
// and decides the accelerator: KVM only where the job's own machine runs under it (host/kvm.ts).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NO_HOOKS, type TestHooks } from '../env.js';
import type { Config, KvmMode } from '../inputs.js';
import { log } from '../log.js';
import { CacheFiles } from '../names.js';
import { ensureHostDeps } from './deps.js';
import { findFirmware, type Firmware } from './firmware.js';
import { hostIdentity, openKvmDevice, probeKvm, readVerdict, recordVerdict, type KvmVerdict } from './kvm.js';
import {
  accelArgs,
  chooseAccel,
  kvmFallbackWarning,
  qemuInfo,
  KVM_RULES_FILE,
  readHostCpuIdentity,
  QEMU_ARCH,
  type AccelChoice,
  type QemuArch,
  type QemuInfo,
} from './platform.js';

export interface Host {
  qemuArch: QemuArch;
  qemu: QemuInfo;
  accel: AccelChoice;
  firmware: Firmware & { size: number };
  /** Host CPU identity; part of a KVM snapshot's identity (a TCG snapshot does not depend on it). */
  cpuIdentity: string;
  kvmMode: KvmMode;
  /** Kernel, QEMU and CPU: the key of KVM verdicts. */
  identity: string;
  /** How the accelerator was chosen, for the log and the summary. */
  accelReason: string;
}

export async function setupHost(config: Config, hooks: Pick<TestHooks, 'assumeKvm' | 'kvmDevice'> = NO_HOOKS): Promise<Host> {
  const qemuArch = QEMU_ARCH[config.arch];
  if (config.installDeps) await ensureHostDeps(qemuArch, config.cache);
  const qemu = await qemuInfo(config.arch);
  const fw = findFirmware(qemuArch, qemu.machine, path.join(config.cacheDir, CacheFiles.firmware));
  const firmware = { ...fw, size: fs.statSync(fw.code).size };
  const cpuModel = readHostCpuIdentity();
  const identity = hostIdentity(qemu, cpuModel);
  const verdict = config.kvm === 'false' || config.crossArch ? undefined : await kvmVerdict(config, hooks, qemuArch, qemu, firmware, identity);
  const choice = chooseAccel(config.kvm, config.crossArch, verdict);
  if (choice.error) throw new Error(choice.error);
  if (choice.warning) log.warning(choice.warning);
  const accel = accelArgs(qemuArch, choice.accel);
  const accelReason =
    config.kvm === 'false' ? 'kvm: false' : config.crossArch ? 'guest arch differs from the host' : `${verdict!.source}: ${verdict!.reason}`;
  log.info(`QEMU ${qemu.version} (${qemu.path}), machine ${qemu.machine}, accel ${accel.accel} (${accelReason}), firmware ${firmware.code}`);
  return { qemuArch, qemu, accel, firmware, cpuIdentity: choice.accel === 'kvm' ? cpuModel : 'tcg', kvmMode: config.kvm, identity, accelReason };
}

/**
 * KVM's verdict for this host: /dev/kvm must open read-write (free to check, never recorded; where
 * kvm-fix-permissions allows, a device closed to this user is opened with the udev rule first);
 * then, under `auto`, a verdict recorded for this host identity is taken as is; else the probe
 * runs (once per host: its verdict is recorded). `kvm: true` always probes afresh.
 */
async function kvmVerdict(config: Config, hooks: Pick<TestHooks, 'assumeKvm' | 'kvmDevice'>, arch: QemuArch, qemu: QemuInfo, firmware: Firmware, identity: string): Promise<KvmVerdict> {
  const hooked = hooks.assumeKvm;
  const device = hooked
    ? undefined
    : await openKvmDevice({ device: hooks.kvmDevice ?? '/dev/kvm', fix: config.kvmFixPermissions, sudo: 'sudo', rulesFile: KVM_RULES_FILE });
  if (device) return { usable: false, reason: device, source: 'device' };
  if (config.kvm === 'auto') {
    const rec = readVerdict(config.cacheDir, identity);
    if (rec) {
      const file = path.join(config.cacheDir, CacheFiles.kvmVerdicts);
      return { usable: rec.usable, source: 'record', reason: `${rec.reason} (recorded ${rec.at} by the ${rec.source} for ${identity}; delete ${file} to try KVM again)` };
    }
  }
  if (hooked) return { usable: true, reason: 'assumed by a test hook (no device check, no probe)', source: 'test hook' };
  const start = Date.now();
  const probe = await probeKvm({ qemu: qemu.path, arch, machine: qemu.machine, accel: accelArgs(arch, 'kvm'), firmware });
  log.info(`KVM probe (${identity}): ${probe.usable ? 'usable' : 'not usable'}, ${probe.reason} (${Date.now() - start} ms)`);
  recordVerdict(config.cacheDir, identity, { usable: probe.usable, reason: probe.reason, source: 'probe' });
  return { ...probe, source: 'probe' };
}

/**
 * After a KVM boot failed under `kvm: auto`: records the verdict, warns once, and returns the host
 * with TCG (snapshot keys name the accelerator, so the rest of the run plans anew).
 */
export function fallBackToTcg(host: Host, cacheDir: string, cause: string): Host {
  recordVerdict(cacheDir, host.identity, { usable: false, reason: cause, source: 'boot' });
  log.warning(kvmFallbackWarning(cause));
  return { ...host, accel: accelArgs(host.qemuArch, 'tcg'), cpuIdentity: 'tcg', accelReason: `boot: ${cause}` };
}

// Turns a Config into the host facts every QEMU command needs, installing what is missing first.
import * as path from 'node:path';
import type { Config } from '../inputs.js';
import { log } from '../log.js';
import { ensureHostDeps } from './deps.js';
import { findFirmware, type Firmware } from './firmware.js';
import {
  accelArgs,
  chooseAccel,
  probeKvm,
  qemuInfo,
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
  firmware: Firmware;
  /** Host CPU identity; part of a KVM snapshot's identity (a TCG snapshot does not depend on it). */
  cpuIdentity: string;
}

export async function setupHost(config: Config): Promise<Host> {
  const qemuArch = QEMU_ARCH[config.arch];
  if (config.installDeps) await ensureHostDeps(qemuArch, config.cache);
  const qemu = await qemuInfo(config.arch);
  const probe = config.kvm === 'false' || config.crossArch ? undefined : await probeKvm(qemu.path);
  const choice = chooseAccel(config.kvm, config.crossArch, probe);
  if (choice.error) throw new Error(choice.error);
  if (choice.warning) log.warning(choice.warning);
  const firmware = findFirmware(qemuArch, qemu.machine, path.join(config.cacheDir, 'firmware'));
  const accel = accelArgs(qemuArch, choice.accel);
  log.info(`QEMU ${qemu.version} (${qemu.path}), machine ${qemu.machine}, accel ${accel.accel}, firmware ${firmware.code}`);
  return { qemuArch, qemu, accel, firmware, cpuIdentity: choice.accel === 'kvm' ? readHostCpuIdentity() : 'tcg' };
}

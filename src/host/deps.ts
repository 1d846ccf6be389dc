// Installs what the host lacks for the guest arch. The plan (which packages, which command) is
// pure and unit-tested; running it is a thin shell around @actions/exec.
import * as core from '@actions/core';
import * as exec from '@actions/exec';
import { which } from '../util/proc.js';
import { firmwareInstalled } from './firmware.js';
import type { QemuArch } from './platform.js';

export type PackageManager = 'apt' | 'dnf' | 'pacman';
export type Need = 'qemu-system' | 'qemu-img' | 'firmware' | 'zstd';

const PACKAGES: Record<PackageManager, Record<Need, Record<QemuArch, string>>> = {
  apt: {
    'qemu-system': { aarch64: 'qemu-system-arm', x86_64: 'qemu-system-x86' },
    'qemu-img': { aarch64: 'qemu-utils', x86_64: 'qemu-utils' },
    firmware: { aarch64: 'qemu-efi-aarch64', x86_64: 'ovmf' },
    zstd: { aarch64: 'zstd', x86_64: 'zstd' },
  },
  dnf: {
    'qemu-system': { aarch64: 'qemu-system-aarch64-core', x86_64: 'qemu-system-x86-core' },
    'qemu-img': { aarch64: 'qemu-img', x86_64: 'qemu-img' },
    firmware: { aarch64: 'edk2-aarch64', x86_64: 'edk2-ovmf' },
    zstd: { aarch64: 'zstd', x86_64: 'zstd' },
  },
  pacman: {
    'qemu-system': { aarch64: 'qemu-system-aarch64', x86_64: 'qemu-system-x86' },
    'qemu-img': { aarch64: 'qemu-img', x86_64: 'qemu-img' },
    firmware: { aarch64: 'edk2-aarch64', x86_64: 'edk2-ovmf' },
    zstd: { aarch64: 'zstd', x86_64: 'zstd' },
  },
};

export interface InstallPlan {
  packages: string[];
  /** Commands to run in order, each argv[0] first. */
  commands: string[][];
}

/** Which packages and commands install the missing needs. Empty when nothing is missing. */
export function planInstall(pm: PackageManager, arch: QemuArch, missing: Need[], root: boolean): InstallPlan {
  const packages = [...new Set(missing.map((n) => PACKAGES[pm][n][arch]))];
  if (packages.length === 0) return { packages, commands: [] };
  const sudo = root ? [] : ['sudo', '-n'];
  const commands: Record<PackageManager, string[][]> = {
    apt: [
      [...sudo, 'apt-get', 'update', '-qq'],
      [...sudo, 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...packages],
    ],
    dnf: [[...sudo, 'dnf', 'install', '-y', ...packages]],
    pacman: [[...sudo, 'pacman', '-S', '--noconfirm', '--needed', ...packages]],
  };
  return { packages, commands: commands[pm] };
}

export async function detectPackageManager(): Promise<PackageManager | undefined> {
  for (const [cmd, pm] of [
    ['apt-get', 'apt'],
    ['dnf', 'dnf'],
    ['pacman', 'pacman'],
  ] as const) {
    if (await which(cmd)) return pm;
  }
  return undefined;
}

export async function missingNeeds(arch: QemuArch, withZstd: boolean): Promise<Need[]> {
  const missing: Need[] = [];
  if (!(await which(`qemu-system-${arch}`))) missing.push('qemu-system');
  if (!(await which('qemu-img'))) missing.push('qemu-img');
  if (!firmwareInstalled(arch)) missing.push('firmware');
  if (withZstd && !(await which('zstd'))) missing.push('zstd');
  return missing;
}

/** Installs what is missing; a no-op (and no package manager call) when all is present. */
export async function ensureHostDeps(arch: QemuArch, withZstd: boolean): Promise<string[]> {
  const missing = await missingNeeds(arch, withZstd);
  if (missing.length === 0) {
    core.info(`Host has everything for ${arch} guests (qemu-system-${arch}, qemu-img, UEFI firmware${withZstd ? ', zstd' : ''})`);
    return [];
  }
  const pm = await detectPackageManager();
  if (!pm) {
    throw new Error(`missing ${missing.join(', ')} and no apt-get, dnf or pacman found: install them, or set install-deps: false and provide them`);
  }
  const plan = planInstall(pm, arch, missing, process.getuid?.() === 0);
  await core.group(`Installing ${plan.packages.join(' ')} (${pm})`, async () => {
    for (const [cmd, ...args] of plan.commands) await exec.exec(cmd, args);
  });
  const still = await missingNeeds(arch, withZstd);
  if (still.length) throw new Error(`still missing after installing ${plan.packages.join(' ')}: ${still.join(', ')}`);
  return plan.packages;
}

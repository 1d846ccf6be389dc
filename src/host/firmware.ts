// UEFI firmware discovery: QEMU's firmware descriptors first (docs/interop/firmware.json), then
// the well-known paths of Debian/Ubuntu, Fedora and Arch. Selection is pure; I/O is at the edges.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { QemuArch } from './platform.js';

export interface Firmware {
  code: string;
  vars: string;
  /** Image format of code and vars ('raw' or 'qcow2'). */
  format: 'raw' | 'qcow2';
  /** Where it came from: a descriptor file or 'known path'. */
  source: string;
}

interface Descriptor {
  'interface-types'?: string[];
  mapping?: {
    device?: string;
    executable?: { filename?: string; format?: string };
    'nvram-template'?: { filename?: string; format?: string };
  };
  targets?: { architecture?: string; machines?: string[] }[];
  features?: string[];
}

export const DESCRIPTOR_DIRS = ['/usr/share/qemu/firmware', '/etc/qemu/firmware'];
// Features that need a matching machine setup (SMM, enrolled keys) this action does not provide.
const UNWANTED_FEATURES = ['secure-boot', 'enrolled-keys', 'requires-smm', 'amd-sev', 'amd-sev-es', 'intel-tdx'];

/** The seed's aarch64 pairs, then OVMF pairs for x86_64 guests. */
export const KNOWN_PATHS: Record<QemuArch, [string, string][]> = {
  aarch64: [
    ['/usr/share/AAVMF/AAVMF_CODE.fd', '/usr/share/AAVMF/AAVMF_VARS.fd'],
    ['/usr/share/qemu-efi-aarch64/QEMU_EFI.fd', '/usr/share/qemu-efi-aarch64/vars-template-pflash.raw'],
    ['/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw', '/usr/share/edk2/aarch64/vars-template-pflash.raw'],
  ],
  x86_64: [
    ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_VARS_4M.fd'],
    ['/usr/share/OVMF/OVMF_CODE.fd', '/usr/share/OVMF/OVMF_VARS.fd'],
    ['/usr/share/edk2/ovmf/OVMF_CODE.fd', '/usr/share/edk2/ovmf/OVMF_VARS.fd'],
    ['/usr/share/edk2/x64/OVMF_CODE.4m.fd', '/usr/share/edk2/x64/OVMF_VARS.4m.fd'],
  ],
};

const INSTALL_HINT: Record<QemuArch, string> = {
  aarch64:
    '  sudo apt install qemu-efi-aarch64    # Debian/Ubuntu\n  sudo dnf install edk2-aarch64        # Fedora\n  sudo pacman -S edk2-aarch64          # Arch',
  x86_64:
    '  sudo apt install ovmf                # Debian/Ubuntu\n  sudo dnf install edk2-ovmf           # Fedora\n  sudo pacman -S edk2-ovmf             # Arch',
};

export function firmwareNotFound(arch: QemuArch): Error {
  return new Error(`EFI firmware not found. Install it with:\n${INSTALL_HINT[arch]}`);
}

function globMatch(pattern: string, value: string): boolean {
  const re = new RegExp('^' + pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
  return re.test(value);
}

/** Picks the best descriptor for arch + versioned machine; files are taken in name order (priority). */
export function selectFromDescriptors(
  descriptors: { file: string; json: string }[],
  arch: QemuArch,
  machine: string | undefined,
  exists: (p: string) => boolean,
): Firmware | undefined {
  const sorted = [...descriptors].sort((a, b) => path.basename(a.file).localeCompare(path.basename(b.file)));
  for (const { file, json } of sorted) {
    let d: Descriptor;
    try {
      d = JSON.parse(json) as Descriptor;
    } catch {
      continue;
    }
    if (!d['interface-types']?.includes('uefi')) continue;
    if (d.mapping?.device !== 'flash') continue;
    if ((d.features ?? []).some((f) => UNWANTED_FEATURES.includes(f))) continue;
    const target = d.targets?.some(
      (t) => t.architecture === arch && (machine === undefined || (t.machines ?? []).some((m) => globMatch(m, machine))),
    );
    if (!target) continue;
    const code = d.mapping.executable?.filename;
    const vars = d.mapping['nvram-template']?.filename;
    const format = d.mapping.executable?.format ?? 'raw';
    if (!code || !vars || (format !== 'raw' && format !== 'qcow2')) continue;
    if (!exists(code) || !exists(vars)) continue;
    return { code, vars, format, source: file };
  }
  return undefined;
}

export function selectFromKnownPaths(arch: QemuArch, exists: (p: string) => boolean): Firmware | undefined {
  for (const [code, vars] of KNOWN_PATHS[arch]) {
    if (exists(code) && exists(vars)) return { code, vars, format: 'raw', source: 'known path' };
  }
  return undefined;
}

function readDescriptors(dirs: string[]): { file: string; json: string }[] {
  const out = new Map<string, { file: string; json: string }>();
  for (const dir of dirs) {
    let names: string[];
    try {
      names = fs.readdirSync(dir).filter((n) => n.endsWith('.json'));
    } catch {
      continue;
    }
    // A later directory's file of the same name overrides (as QEMU's spec says for /etc).
    for (const n of names) out.set(n, { file: path.join(dir, n), json: fs.readFileSync(path.join(dir, n), 'utf8') });
  }
  return [...out.values()];
}

/** aarch64 `virt` pflash devices must be exactly 64 MiB. */
export const AARCH64_PFLASH_SIZE = 64 * 1024 * 1024;

/** Pads a raw image to `size` in `dir` (once; reused by name) and returns the padded copy. */
export function padTo(file: string, size: number, dir: string): string {
  const st = fs.statSync(file);
  if (st.size === size) return file;
  if (st.size > size) throw new Error(`${file} is ${st.size} bytes, larger than the ${size}-byte pflash`);
  fs.mkdirSync(dir, { recursive: true });
  const out = path.join(dir, `${path.basename(file)}.padded-${size}`);
  if (fs.existsSync(out) && fs.statSync(out).size === size) return out;
  const tmp = `${out}.tmp-${process.pid}`;
  fs.copyFileSync(file, tmp);
  fs.truncateSync(tmp, size);
  fs.renameSync(tmp, out);
  return out;
}

export function findFirmware(arch: QemuArch, machine: string, padDir: string, dirs = DESCRIPTOR_DIRS): Firmware {
  const exists = (p: string) => fs.existsSync(p);
  const configHome = process.env.XDG_CONFIG_HOME || (process.env.HOME ? path.join(process.env.HOME, '.config') : '');
  const allDirs = configHome ? [...dirs, path.join(configHome, 'qemu/firmware')] : dirs;
  const fw = selectFromDescriptors(readDescriptors(allDirs), arch, machine, exists) ?? selectFromKnownPaths(arch, exists);
  if (!fw) throw firmwareNotFound(arch);
  if (arch === 'aarch64' && fw.format === 'raw') {
    return { ...fw, code: padTo(fw.code, AARCH64_PFLASH_SIZE, padDir), vars: padTo(fw.vars, AARCH64_PFLASH_SIZE, padDir) };
  }
  return fw;
}

/** Whether any usable firmware for the arch is installed (before QEMU is, so any machine). */
export function firmwareInstalled(arch: QemuArch, dirs = DESCRIPTOR_DIRS): boolean {
  const exists = (p: string) => fs.existsSync(p);
  return !!(selectFromDescriptors(readDescriptors(dirs), arch, undefined, exists) ?? selectFromKnownPaths(arch, exists));
}

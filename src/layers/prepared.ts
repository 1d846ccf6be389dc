// The prepared layer (and the browser layer, built the same way): an image booted once through an
// overlay, packages installed by cloud-init, an optional script run in it, instance state cleaned
// so every later boot is a first boot, powered off cleanly, and compressed into a standalone qcow2.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tempPath } from '../cache/local.js';
import { log } from '../log.js';
import { GuestFiles } from '../names.js';
import { CA_CLEANUP, PROXY_CLEANUP } from '../proxy.js';
import { convert } from '../vm/images.js';
import { generateKeyPair } from '../vm/ssh.js';
import type { LayerContext } from './context.js';
import { BUILD_APT_FILES, bootBuilder } from './guest.js';

/** Makes the image a template: next boot is a new cloud-init instance with new host keys. */
export const CLEAN_FOR_TEMPLATE = 'sudo cloud-init clean --logs && sudo rm -f /etc/ssh/ssh_host_*_key* && sudo truncate -s 0 /etc/machine-id';

function verifyCommand(manager: 'apt' | 'dnf', packages: readonly string[]): string {
  const names = packages.map((p) => p.split(/[=:]/)[0]).join(' ');
  return manager === 'apt' ? `dpkg -s ${names} >/dev/null` : `rpm -q ${names} >/dev/null`;
}

const CLEAN_PACKAGE_CACHE = { apt: 'sudo apt-get clean', dnf: 'sudo dnf clean all' } as const;

export interface ImageBuild {
  name: string;
  base: string;
  out: string;
  packages: readonly string[];
  /** Scripts run in order as the guest user (bash -e, script on stdin, output shown live). */
  scripts?: { label: string; text: string }[];
  /** A command whose output (trimmed) the build returns, run after the scripts (e.g. which source installed). */
  result?: string;
  memoryMb: number;
  cpus: number;
  sshTimeoutMs: number;
}

/** Boots `base`, lets cloud-init install `packages`, runs `scripts`, and writes `out` (compressed). Returns `result`'s output. */
export async function buildImage(ctx: LayerContext, o: ImageBuild): Promise<string | undefined> {
  const work = tempPath(ctx.dir, `${o.name}-work`);
  fs.mkdirSync(work, { recursive: true });
  let result: string | undefined;
  try {
    const m = await bootBuilder(ctx, {
      name: o.name,
      base: o.base,
      workDir: work,
      key: generateKeyPair(),
      // The build's own, like its key: CLEAN_FOR_TEMPLATE deletes it before the image is kept.
      hostKey: generateKeyPair('ryra-vm host key'),
      memoryMb: o.memoryMb,
      cpus: o.cpus,
      diskSize: '20G',
      scratchDisk: true,
      seed: { hostname: o.name, packages: o.packages },
      sshTimeoutMs: o.sshTimeoutMs,
      cloudInitTimeoutMs: ctx.timeouts.packagesMs,
    });
    try {
      if (o.packages.length) await m.check(verifyCommand(ctx.image.guestPackageManager, o.packages), `checking packages ${o.packages.join(' ')}`);
      for (const s of o.scripts ?? []) {
        log.info(`  ${o.name}: running ${s.label}`);
        await m.check('bash -e -s', s.label, { input: s.text, stdout: process.stderr, stderr: process.stderr, timeoutMs: ctx.timeouts.packagesMs });
      }
      if (o.result) result = (await m.check(o.result, 'reading the build result')).stdout.trim();
      await m.check(`${PROXY_CLEANUP}; ${CA_CLEANUP}; sudo rm -f ${BUILD_APT_FILES.map((f) => f.path).join(' ')}; ${CLEAN_PACKAGE_CACHE[ctx.image.guestPackageManager]}; ${CLEAN_FOR_TEMPLATE}`, 'cleaning instance state');
      if (!(await m.poweroff(ctx.timeouts.stepMs))) throw new Error(`${o.name} did not shut down cleanly; not keeping a possibly inconsistent image`);
    } finally {
      await m.destroy();
    }
    const tmp = tempPath(ctx.dir, path.basename(o.out));
    log.info(`  ${o.name}: compressing into ${path.basename(o.out)}`);
    await convert(path.join(work, GuestFiles.disk), tmp, { compress: true });
    fs.renameSync(tmp, o.out);
    return result;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

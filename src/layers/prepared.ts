// The prepared layer: the raw image booted once through an overlay, packages installed by
// cloud-init, instance state cleaned so every later boot is a first boot, powered off cleanly,
// and compressed into a standalone qcow2.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log } from '../log.js';
import { convert } from '../vm/images.js';
import { generateKeyPair } from '../vm/ssh.js';
import type { LayerContext } from './context.js';
import { bootBuilder } from './guest.js';
import { tempPath } from './manifest.js';

/** Makes the image a template: next boot is a new cloud-init instance with new host keys. */
export const CLEAN_FOR_TEMPLATE = 'sudo cloud-init clean --logs && sudo rm -f /etc/ssh/ssh_host_*_key* && sudo truncate -s 0 /etc/machine-id';

function verifyCommand(manager: 'apt' | 'dnf', packages: readonly string[]): string {
  const names = packages.map((p) => p.split(/[=:]/)[0]).join(' ');
  return manager === 'apt' ? `dpkg -s ${names} >/dev/null` : `rpm -q ${names} >/dev/null`;
}

const CLEAN_PACKAGE_CACHE = { apt: 'sudo apt-get clean', dnf: 'sudo dnf clean all' } as const;

/** Boots `base`, runs `install` (or lets cloud-init install `packages`), and writes `out` (compressed). */
export async function buildImage(
  ctx: LayerContext,
  o: { name: string; base: string; out: string; packages: readonly string[]; install?: string; memoryMb: number; cpus: number; sshTimeoutMs: number },
): Promise<void> {
  const work = tempPath(ctx.dir, `${o.name}-work`);
  fs.mkdirSync(work, { recursive: true });
  try {
    const m = await bootBuilder(ctx, {
      name: o.name,
      base: o.base,
      workDir: work,
      key: generateKeyPair(),
      memoryMb: o.memoryMb,
      cpus: o.cpus,
      diskSize: '20G',
      seed: { hostname: o.name, packages: o.packages },
      sshTimeoutMs: o.sshTimeoutMs,
      cloudInitTimeoutMs: ctx.timeouts.packagesMs,
    });
    try {
      if (o.packages.length) await m.check(verifyCommand(ctx.image.guestPackageManager, o.packages), `checking packages ${o.packages.join(' ')}`);
      if (o.install) {
        log.info(`  ${o.name}: running the install script`);
        await m.check(o.install, 'the install script', { stdout: process.stderr, stderr: process.stderr, timeoutMs: ctx.timeouts.packagesMs });
      }
      await m.check(`${CLEAN_PACKAGE_CACHE[ctx.image.guestPackageManager]}; ${CLEAN_FOR_TEMPLATE}`, 'cleaning instance state');
      if (!(await m.poweroff())) throw new Error(`${o.name} did not shut down cleanly; not keeping a possibly inconsistent image`);
    } finally {
      await m.destroy();
    }
    const tmp = tempPath(ctx.dir, path.basename(o.out));
    log.info(`  ${o.name}: compressing into ${path.basename(o.out)}`);
    await convert(path.join(work, 'disk.qcow2'), tmp, { compress: true });
    fs.renameSync(tmp, o.out);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// A layer builder's guest: the shared cold boot (src/vm/boot.ts) with this host's QEMU, machine,
// accelerator and firmware filled in, and the runner's proxy handed to the guest.
import { runnerSeed } from '../proxy.js';
import { coldBoot, type ColdBootOptions } from '../vm/boot.js';
import type { Machine } from '../vm/machine.js';
import type { LayerContext } from './context.js';
import { layoutFor } from './plan.js';

export type BuilderGuest = Omit<ColdBootOptions, 'qemu' | 'layout' | 'firmware'> & { memoryMb: number; cpus: number; shareTag?: string };

/**
 * dpkg without its per-file fsync while a build installs packages (a failed build is thrown away,
 * and each sync is a flush through the emulated disk). Removed before the image is kept.
 */
export const BUILD_DPKG_CFG = { path: '/etc/dpkg/dpkg.cfg.d/ryra-vm-build', content: 'force-unsafe-io\n' };
/**
 * apt without the description translations while a build installs packages: measured here, the
 * 6.5 MB Translation-en is 40% of `apt-get update`'s download through QEMU's user network under TCG.
 * Removed before the image is kept, like BUILD_DPKG_CFG.
 */
export const BUILD_APT_CFG = { path: '/etc/apt/apt.conf.d/99ryra-vm-build', content: 'Acquire::Languages "none";\n' };
/** Both, for an apt guest's build. */
export const BUILD_APT_FILES = [BUILD_DPKG_CFG, BUILD_APT_CFG];

/**
 * Cold-boots a build's guest. An image build (a scratch disk, packages to install) gets the runner's
 * proxy and local CAs, removed again before the image is kept; a snapshot's guest gets neither (a
 * snapshot must not carry one runner's network setup to another: VMs get theirs when they boot).
 */
export function bootBuilder(ctx: LayerContext, g: BuilderGuest): Promise<Machine> {
  const { memoryMb, cpus, shareTag, ...rest } = g;
  const manager = ctx.image.guestPackageManager;
  const network = rest.scratchDisk ? runnerSeed(manager, manager === 'apt' ? BUILD_APT_FILES : []) : {};
  return coldBoot({
    ...rest,
    seed: { ...rest.seed, ...network },
    qemu: ctx.host.qemu.path,
    layout: layoutFor(ctx.host, { memoryMb, cpus, shareTag }),
    firmware: ctx.host.firmware,
    stallMs: ctx.hooks.stallMs,
  });
}

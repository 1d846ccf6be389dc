// A layer builder's guest: the shared cold boot (src/vm/boot.ts) with this host's QEMU, machine,
// accelerator and firmware filled in.
import { coldBoot, type ColdBootOptions } from '../vm/boot.js';
import type { Machine } from '../vm/machine.js';
import type { LayerContext } from './context.js';

export type BuilderGuest = Omit<ColdBootOptions, 'qemu' | 'arch' | 'machine' | 'accel' | 'firmware'>;

export function bootBuilder(ctx: LayerContext, g: BuilderGuest): Promise<Machine> {
  const { host } = ctx;
  return coldBoot({ ...g, qemu: host.qemu.path, arch: host.qemuArch, machine: host.qemu.machine, accel: host.accel, firmware: host.firmware });
}

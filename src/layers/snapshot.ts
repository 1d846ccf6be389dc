// The snapshot layer: the prepared (or browser) image booted with the shared key and the layout
// every later VM uses, set up as the seed does, RAM zeroed so the state stays small, `savevm ready`
// over QMP, then proven by restoring a throw-away copy before it is moved into place.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { log } from '../log.js';
import { GUEST_FILES, restoreMachine, SNAPSHOT_TAG } from '../vm/boot.js';
import { listSnapshots, rebaseUnsafe } from '../vm/images.js';
import type { VmLayout } from '../vm/spec.js';
import type { KeyPair } from '../vm/ssh.js';
import type { LayerContext } from './context.js';
import { bootBuilder } from './guest.js';
import { tempPath } from './manifest.js';

export const SHARE_TAG = 'images';

/**
 * The seed's setup, exactly: /mnt/images made but NOT mounted (a mounted virtfs export blocks
 * savevm), rootless podman pointed at it, user units reloaded.
 */
export const SNAPSHOT_SETUP =
  'sudo mkdir -p /mnt/images; ' +
  'mkdir -p ~/.config/containers && ' +
  `printf '[storage]\\ndriver = "overlay"\\n[storage.options]\\nadditionalimagestores = ["/mnt/images"]\\n' > ~/.config/containers/storage.conf && ` +
  `printf 'unqualified-search-registries = ["docker.io"]\\n' > ~/.config/containers/registries.conf; ` +
  'systemctl --user daemon-reload';

/**
 * QEMU stores no zero pages: drop caches, fill free memory with zeros in a tmpfs, free it. The
 * freed pages keep their zeros, so the saved state is only what the guest really uses.
 */
export const SHRINK_RAM =
  'sync; echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null; ' +
  'd=$(mktemp -d); sudo mount -t tmpfs -o size=100% none "$d"; ' +
  `n=$(awk '/MemAvailable/ {print int($2/1024) - 160}' /proc/meminfo); ` +
  '[ "$n" -gt 0 ] && sudo dd if=/dev/zero of="$d/zero" bs=1M count="$n" status=none; ' +
  'sudo rm -f "$d/zero"; sudo umount "$d"; rmdir "$d"; echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null';

export interface SnapshotFiles {
  disk: string;
  efivars: string;
  seed: string;
}

export interface SnapshotBuild {
  layout: VmLayout;
  /** QEMU's own savevm time (QMP round trip). */
  savevmMs: number;
  /** The pipeline's whole savevm step: shrink + savevm + listing check. */
  stepMs: number;
  /** Restore of the throw-away copy to SSH. */
  verifyRestoreMs: number;
  /** Size of the saved RAM state (from `qemu-img snapshot -l` of the UEFI vars drive). */
  stateBytes: number;
}

export async function buildSnapshot(
  ctx: LayerContext,
  o: { name: string; base: string; out: SnapshotFiles; key: KeyPair; memoryMb: number; cpus: number; shrink?: boolean },
): Promise<SnapshotBuild> {
  const work = tempPath(ctx.dir, `${o.name}-work`);
  const share = path.join(ctx.dir, 'images');
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(share, { recursive: true });
  try {
    const m = await bootBuilder(ctx, {
      name: o.name,
      base: o.base,
      workDir: work,
      key: o.key,
      memoryMb: o.memoryMb,
      cpus: o.cpus,
      seed: { hostname: 'ryra-vm' },
      share: { path: share, tag: SHARE_TAG },
      sshTimeoutMs: ctx.timeouts.bootSshMs,
      cloudInitTimeoutMs: ctx.timeouts.bootSshMs,
    });
    let layout: VmLayout;
    let savevmMs: number;
    const stepStart = Date.now();
    try {
      await m.check(SNAPSHOT_SETUP, 'snapshot setup');
      if (o.shrink !== false) await m.check(SHRINK_RAM, 'zeroing free guest memory');
      savevmMs = await m.saveSnapshot(SNAPSHOT_TAG);
      layout = {
        arch: m.spec.arch,
        machine: m.spec.machine,
        accel: m.spec.accel,
        memoryMb: m.spec.memoryMb,
        cpus: m.spec.cpus,
        firmwareFormat: m.spec.firmwareFormat,
        seed: true,
        shareTag: SHARE_TAG,
      };
    } finally {
      await m.destroy();
    }
    const stepMs = Date.now() - stepStart;
    const disk = path.join(work, GUEST_FILES.disk);
    const efivars = path.join(work, GUEST_FILES.efivars);
    if (!(await listSnapshots(disk)).some((x) => x.tag === SNAPSHOT_TAG)) throw new Error(`savevm wrote no '${SNAPSHOT_TAG}' snapshot into ${disk}`);
    // QEMU writes the RAM state into the first writable qcow2 drive: the UEFI vars.
    const stateBytes = (await listSnapshots(efivars)).find((x) => x.tag === SNAPSHOT_TAG)?.vmStateBytes ?? 0;
    log.info(`  ${o.name}: savevm ${(savevmMs / 1000).toFixed(1)} s, RAM state ${(stateBytes / 1048576).toFixed(0)} MiB; verifying by restoring a copy`);

    const verifyDir = path.join(work, 'verify');
    fs.mkdirSync(verifyDir);
    const { machine, readyMs } = await restoreMachine({
      name: `${o.name}-verify`,
      qemu: ctx.host.qemu.path,
      efiCode: ctx.host.firmware.code,
      files: { disk, efivars, seed: path.join(work, GUEST_FILES.seed) },
      backing: o.base,
      layout,
      workDir: verifyDir,
      key: o.key,
      sshTimeoutMs: ctx.timeouts.restoreSshMs,
      sharePath: share,
    });
    await machine.destroy();
    log.info(`  ${o.name}: restored copy reached SSH in ${(readyMs / 1000).toFixed(1)} s`);

    // Relative backing path, so the cache dir can move; then into place under the seed's names.
    await rebaseUnsafe(disk, path.relative(path.dirname(o.out.disk), path.resolve(o.base)));
    fs.renameSync(disk, o.out.disk);
    fs.renameSync(efivars, o.out.efivars);
    fs.renameSync(path.join(work, GUEST_FILES.seed), o.out.seed);
    return { layout, savevmMs, stepMs, verifyRestoreMs: readyMs, stateBytes };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// The snapshot layer: the prepared (or browser) image booted with the shared key in the one device
// layout every restore uses, set up as the seed does, free RAM zeroed so the state stays small,
// `savevm ready` over QMP, then proven by restoring a throw-away copy before it is moved into place.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tempPath } from '../cache/local.js';
import { log } from '../log.js';
import { CacheFiles, GuestFiles } from '../names.js';
import { restoreMachine, SNAPSHOT_TAG } from '../vm/boot.js';
import { listSnapshots } from '../vm/images.js';
import { recipe, type VmLayout } from '../vm/spec.js';
import { hostKeyFor, type KeyPair } from '../vm/ssh.js';
import type { LayerContext } from './context.js';
import { bootBuilder } from './guest.js';

export { SHARE_TAG } from './plan.js';

/**
 * The seed's setup, run as a bash script on stdin (`bash -s`): /mnt/images made but NOT mounted (a
 * mounted virtfs export blocks savevm), and where podman is installed, rootless podman pointed at
 * it and user units reloaded, the seed's own commands. Without podman (`base-packages: false`) there
 * is nothing to configure, and a guest without a user session bus could not reload user units
 * anyway. A failed command stops the script and is named on stderr, which the layer's warning shows.
 */
export const SNAPSHOT_SETUP = `set -eE
trap 'echo "snapshot setup: \\\`$BASH_COMMAND\\\` failed (exit $?)" >&2' ERR
sudo mkdir -p /mnt/images
if command -v podman >/dev/null; then
  mkdir -p ~/.config/containers
  printf '[storage]\\ndriver = "overlay"\\n[storage.options]\\nadditionalimagestores = ["/mnt/images"]\\n' > ~/.config/containers/storage.conf
  printf 'unqualified-search-registries = ["docker.io"]\\n' > ~/.config/containers/registries.conf
  systemctl --user daemon-reload
fi
`;

/** The shell the setup runs in, its text on stdin. */
export const SNAPSHOT_SETUP_SHELL = 'bash -s';

/**
 * QEMU stores no zero pages: drop the caches, then fill free memory with zeros in a tmpfs until
 * only a small reserve is left, and free it. The freed pages keep their zeros, so the saved state is
 * what the guest really uses plus that reserve. During the fill the kernel's own reserves are
 * lowered so that they are zeroed too: min_free_kbytes (66 MiB in a 4 GiB Debian guest, raised for
 * transparent huge pages), the watermark gaps (0.1% of memory each) and the low zone's protection
 * from allocations that prefer a higher zone (lowmem_reserve_ratio; the DMA32 zone is where the
 * firmware and early boot left their garbage). The fill stops at 8 MiB available: MemAvailable
 * counts the page cache of running programs, so the last chunks push some of it out and zero it
 * too (they fault back in). Measured in a 4 GiB guest: 27 of the 37 MiB of unzeroed free pages
 * were in DMA32 under the default protection; the state went from 245 to 195 MiB (2 GiB: 179 to
 * 163), restore → SSH unchanged. Everything is restored before savevm. No cache is dropped after
 * the fill: freed cache pages are not zero. Run as one root shell (`sudo sh -s`, the script on
 * stdin): a sudo costs seconds in an emulated guest.
 */
export const SHRINK_RAM = `set -e
sync
echo 3 > /proc/sys/vm/drop_caches
v=/proc/sys/vm
keep="$(cat $v/min_free_kbytes) $(cat $v/watermark_scale_factor)"
ratio=$(cat $v/lowmem_reserve_ratio)
echo 4096 > $v/min_free_kbytes
echo 1 > $v/watermark_scale_factor
echo $ratio | sed 's/[0-9][0-9]*/0/g' > $v/lowmem_reserve_ratio
d=$(mktemp -d)
mount -t tmpfs -o size=100% none "$d"
i=0
while a=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo); [ "$a" -gt 8 ]; do
  n=$((a - 8)); [ "$n" -gt 256 ] && n=256
  dd if=/dev/zero of="$d/z$i" bs=1M count="$n" status=none || break
  i=$((i + 1))
done
rm -f "$d"/z*
umount "$d"
rmdir "$d"
echo $ratio > $v/lowmem_reserve_ratio
set -- $keep
echo "$1" > $v/min_free_kbytes
echo "$2" > $v/watermark_scale_factor
`;

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
  /** Size of the saved RAM state (from the UEFI vars drive, where QEMU writes it). */
  stateBytes: number;
}

/** savevm's bound: the RAM state is written at disk speed, but a loaded TCG host is slow. */
function savevmTimeoutMs(memoryMb: number): number {
  return Math.max(300_000, memoryMb * 200);
}

export async function buildSnapshot(
  ctx: LayerContext,
  o: { name: string; base: string; out: SnapshotFiles; key: KeyPair; layout: VmLayout; diskSize: string; shrink?: boolean },
): Promise<SnapshotBuild> {
  const work = tempPath(ctx.dir, `${o.name}-work`);
  const share = path.join(ctx.dir, CacheFiles.share);
  fs.mkdirSync(work, { recursive: true });
  fs.mkdirSync(share, { recursive: true });
  try {
    // The layout the plan computed: the one the layer's manifest must record and every restore uses.
    const layout = o.layout;
    const m = await bootBuilder(ctx, {
      name: o.name,
      base: o.base,
      workDir: work,
      key: o.key,
      // Saved with sshd running: every restore's guest presents this key, which restores pin.
      hostKey: hostKeyFor(o.key),
      memoryMb: layout.memoryMb,
      cpus: layout.cpus,
      shareTag: layout.shareTag,
      shareDir: share,
      diskSize: o.diskSize,
      seed: { hostname: 'ryra-vm' },
      sshTimeoutMs: ctx.timeouts.bootSshMs,
      cloudInitTimeoutMs: ctx.timeouts.bootSshMs,
    });
    let savevmMs: number;
    const stepStart = Date.now();
    try {
      await m.check(SNAPSHOT_SETUP_SHELL, 'snapshot setup', { input: SNAPSHOT_SETUP, timeoutMs: ctx.timeouts.stepMs });
      if (o.shrink !== false) await m.check('sudo sh -s', 'zeroing free guest memory', { input: SHRINK_RAM, timeoutMs: ctx.timeouts.stepMs });
      savevmMs = await m.saveSnapshot(SNAPSHOT_TAG, savevmTimeoutMs(layout.memoryMb));
    } finally {
      await m.destroy();
    }
    const stepMs = Date.now() - stepStart;
    const disk = path.join(work, GuestFiles.disk);
    const efivars = path.join(work, GuestFiles.efivars);
    const seed = path.join(work, GuestFiles.seed);
    if (!(await listSnapshots(disk)).some((x) => x.tag === SNAPSHOT_TAG)) throw new Error(`savevm wrote no '${SNAPSHOT_TAG}' snapshot into ${disk}`);
    // QEMU writes the RAM state into the first writable qcow2 drive: the UEFI vars.
    const stateBytes = (await listSnapshots(efivars)).find((x) => x.tag === SNAPSHOT_TAG)?.vmStateBytes ?? 0;
    log.info(`  ${o.name}: setup, zeroing and savevm ${(stepMs / 1000).toFixed(1)} s (savevm ${(savevmMs / 1000).toFixed(1)} s), RAM state ${(stateBytes / 1048576).toFixed(0)} MiB; verifying by restoring a copy`);

    // The restore recipe names the seed ISO where the layer keeps it; the copy here proves the same layout.
    const { machine, readyMs } = await restoreMachine({
      name: `${o.name}-verify`,
      qemu: ctx.host.qemu.path,
      recipe: recipe(layout, { efiCode: ctx.host.firmware.code, seedIso: seed }),
      files: { disk, efivars },
      backing: o.base,
      workDir: path.join(work, 'verify'),
      key: o.key,
      sshTimeoutMs: ctx.timeouts.restoreSshMs,
      shareDir: share,
    });
    await machine.destroy();
    log.info(`  ${o.name}: restored copy reached SSH in ${(readyMs / 1000).toFixed(1)} s`);

    // The disk names its backing by absolute path (coldBoot's overlay): a copy made anywhere on this host works as is.
    fs.renameSync(disk, o.out.disk);
    fs.renameSync(efivars, o.out.efivars);
    fs.renameSync(seed, o.out.seed);
    return { layout, savevmMs, stepMs, verifyRestoreMs: readyMs, stateBytes };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// What every layer builder needs: the config, the host, the catalogue entry, the cache dir, the
// time limits for this accelerator (the seed's: KVM 120-300 s, TCG 600-900 s to SSH), and who
// holds the layers in use while this run needs them.
import type { RemoteTier } from '../cache/tier.js';
import type { Holder } from '../cache/local.js';
import type { DistroImage } from '../distro.js';
import type { TestHooks } from '../env.js';
import type { Host } from '../host/setup.js';
import type { Config } from '../inputs.js';

export interface Timeouts {
  /** Cold boot of a fresh image to SSH. */
  prepareSshMs: number;
  /** Boot of the prepared image to SSH. */
  bootSshMs: number;
  /** cloud-init installing packages, an install script. */
  packagesMs: number;
  /** Restore from a snapshot to SSH. */
  restoreSshMs: number;
  /**
   * One short guest step: the snapshot's setup and RAM zeroing, a VM's personalisation, a clean
   * shutdown. A fixed bound here broke under TCG on a loaded host (an emulated arm64 guest is
   * several times slower than an amd64 one), so it scales with the accelerator like the others.
   */
  stepMs: number;
}

export function timeoutsFor(accel: 'kvm' | 'tcg', scale = 1): Timeouts {
  const t =
    accel === 'kvm'
      ? { prepareSshMs: 300_000, bootSshMs: 120_000, packagesMs: 1_800_000, restoreSshMs: 60_000, stepMs: 300_000 }
      : { prepareSshMs: 900_000, bootSshMs: 600_000, packagesMs: 3_600_000, restoreSshMs: 300_000, stepMs: 900_000 };
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v * scale])) as unknown as Timeouts;
}

export interface LayerContext {
  config: Config;
  host: Host;
  image: DistroImage;
  dir: string;
  timeouts: Timeouts;
  /** The remote tiers in lookup order (the Actions cache, a registry); empty when none. */
  tiers: RemoteTier[];
  /** The test hooks the entry point read (NO_HOOKS in the product). */
  hooks: TestHooks;
  /** Who holds this run's layers in use (the job in Actions, else this process). */
  holder: Holder;
  /** Layers this run has that a tier may lack, to be saved there afterwards. */
  pending: PendingSave[];
  /** The tiers (labels) that hold this run's SSH key: the only ones a snapshot is saved to. */
  keyTiers?: string[];
  /** Layers made anew (`redownload`): neither a local copy nor any tier's is used. */
  fresh?: readonly string[];
}

/** A layer to save to the tiers that lack it (all but `from`, the tiers it came from). */
export interface PendingSave {
  layer: string;
  key: string;
  /** File names relative to `dir` (the layer's files and manifest). */
  files: string[];
  dir: string;
  from: string[];
  /** When set, the only tiers (labels) it may go to (a snapshot: those that hold its SSH key). */
  only?: string[];
}

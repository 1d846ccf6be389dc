// Every environment variable the engine reads, parsed in one place: the user's knobs, and the
// hooks that only the project's own tests set (each named RYRA_VM_TEST_* or documented as such).
// The hooks are read by the entry points (action.ts, cli.ts) and passed down; the engine reads no
// global for them, and a caller that passes none gets the product's behaviour (NO_HOOKS).
import * as fs from 'node:fs';

export interface Knobs {
  /** RYRA_VM_DEBUG: debug lines in the CLI's log. (RYRA_VM_RUNTIME_DIR is read by paths.ts, at each call: the post step sets it.) */
  debug: boolean;
}

export interface TestHooks {
  /** RYRA_VM_BROWSER_SCRIPT: a file whose text replaces the browser layer's install script. */
  browserScript?: string;
  /** RYRA_VM_TIMEOUT_SCALE: multiplies every guest time limit. */
  timeoutScale: number;
  /** RYRA_VM_CACHE_LOOKUP_TIMEOUT_MS / RYRA_VM_CACHE_TRANSFER_TIMEOUT_MS: Actions cache bounds. */
  cacheLookupMs?: number;
  cacheTransferMs?: number;
  /** RYRA_VM_TEST_ASSUME_KVM=1: KVM is taken without opening /dev/kvm or probing (a recorded verdict still counts), so the first boot meets whatever this host's KVM does. */
  assumeKvm: boolean;
  /** RYRA_VM_TEST_KVM_DEVICE: the node opened in place of /dev/kvm (a missing path: a host without KVM; /dev/null: one whose device opens, leaving the verdict to the probe). */
  kvmDevice?: string;
  /** RYRA_VM_TEST_STALL_MS: how long a KVM guest may print nothing before it counts as stalled. */
  stallMs?: number;
}

const num = (v: string | undefined): number | undefined => (v && Number.isFinite(Number(v)) && Number(v) > 0 ? Number(v) : undefined);

export function readKnobs(env: NodeJS.ProcessEnv = process.env): Knobs {
  return { debug: !!env.RYRA_VM_DEBUG };
}

export function readHooks(env: NodeJS.ProcessEnv = process.env): TestHooks {
  return {
    browserScript: env.RYRA_VM_BROWSER_SCRIPT ? fs.readFileSync(env.RYRA_VM_BROWSER_SCRIPT, 'utf8') : undefined,
    timeoutScale: num(env.RYRA_VM_TIMEOUT_SCALE) ?? 1,
    cacheLookupMs: num(env.RYRA_VM_CACHE_LOOKUP_TIMEOUT_MS),
    cacheTransferMs: num(env.RYRA_VM_CACHE_TRANSFER_TIMEOUT_MS),
    assumeKvm: env.RYRA_VM_TEST_ASSUME_KVM === '1',
    kvmDevice: env.RYRA_VM_TEST_KVM_DEVICE || undefined,
    stallMs: num(env.RYRA_VM_TEST_STALL_MS),
  };
}

/** No hooks: the product's own bounds and checks. */
export const NO_HOOKS: TestHooks = Object.freeze({ timeoutScale: 1, assumeKvm: false });

let knobs: Knobs | undefined;

/** The process's knobs, read once. */
export function getKnobs(): Knobs {
  return (knobs ??= readKnobs());
}

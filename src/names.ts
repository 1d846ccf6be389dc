// Every file name in the cache dir and in a VM's dir, defined once (as lima's filenames package does).
import * as path from 'node:path';

/**
 * A VM's name, which is also its hostname and its `Host` for plain ssh: no dots, so it never
 * shadows a real host (github.com), and never `localhost`.
 */
export const VM_NAME_RE = /^(?!localhost$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
export const VM_NAME_RULE = 'a VM name is lowercase letters, digits and -, starts and ends with a letter or digit, has at most 63 characters and is not localhost';

/** Files and dirs of the cache dir beside the layers. */
export const CacheFiles = {
  /** The SSH key baked into every snapshot (the seed's name). */
  sshKey: 'test-ssh-key',
  /** The read-only `images` virtfs share of snapshot boots. */
  share: 'images',
  /** Padded copies of aarch64 firmware. */
  firmware: 'firmware',
  /** KVM verdicts per host identity. */
  kvmVerdicts: 'kvm-verdicts.json',
  /** Holders of layers in use: `<dir>/<layer base>/<holder>.json`. */
  inUse: '.in-use',
} as const;

export const MANIFEST_SUFFIX = '.manifest.json';

export function manifestPath(dir: string, base: string): string {
  return path.join(dir, base + MANIFEST_SUFFIX);
}

/** A snapshot layer's three files, from its base name. */
export function snapshotFileNames(base: string): [disk: string, efivars: string, seed: string] {
  return [`${base}.qcow2`, `${base}-efivars.qcow2`, `${base}-seed.iso`];
}

/** Files in a guest's work dir (a layer build's, a VM's). */
export const GuestFiles = {
  disk: 'disk.qcow2',
  efivars: 'efivars.qcow2',
  seed: 'seed.iso',
  serialLog: 'serial.log',
  pid: 'qemu.pid',
  stderr: 'qemu.stderr',
  /** A VM's record (`ryra-vm list`). */
  vmRecord: 'vm.json',
  /** A VM's own SSH key (0600), and `<key>.pub`. */
  vmKey: 'id_ed25519',
  /** The VM's pinned SSH host key, for OpenSSH (its Host entry's UserKnownHostsFile). */
  knownHosts: 'known_hosts',
  /** The share dir of a VM restored where the cache dir's is not wanted. */
  share: 'share',
} as const;

/** Files of the runtime dir (RUNNER_TEMP/ryra-vm in Actions). */
export const RuntimeFiles = {
  vms: 'vms',
  bin: 'bin',
  /** Run records: `run-<id>.json`, one per configuration prepared in this job. */
  recordPrefix: 'run-',
  sshConfig: 'ssh_config',
} as const;

// cloud-init NoCloud seed: user-data and meta-data in an ISO 9660 volume labelled `cidata`.
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import { GUEST_USER } from '../distro.js';
import type { GuestFile } from '../proxy.js';
import type { KeyPair } from './ssh.js';
import { buildIso } from './iso9660.js';

export interface SeedOptions {
  publicKey: string;
  /**
   * The guest's SSH host key, the only one it has: connections pin its public half. Without it
   * the guest makes an ed25519 key of its own (nobody can pin that one).
   */
  hostKey?: KeyPair;
  hostname: string;
  /** Packages cloud-init installs at first boot (prepared layer only). */
  packages?: readonly string[];
  instanceId?: string;
  user?: string;
  /** Files written at first boot, before packages are installed (appended to where they exist). */
  files?: GuestFile[];
  /** Shell scripts run as root early at boot, before packages are installed. */
  bootcmd?: string[];
}

/**
 * `#cloud-config` user-data. JSON is valid YAML, so the document is written as JSON: no YAML
 * library, and no quoting mistakes with keys or package names.
 */
export function userData(o: SeedOptions): string {
  const doc: Record<string, unknown> = {
    hostname: o.hostname,
    // Without it the guest cannot resolve its own name and every sudo stalls on the lookup.
    manage_etc_hosts: true,
    users: [
      {
        name: o.user ?? GUEST_USER,
        sudo: 'ALL=(ALL) NOPASSWD:ALL',
        shell: '/bin/bash',
        lock_passwd: true,
        ssh_authorized_keys: [o.publicKey.trim()],
      },
    ],
    ssh_pwauth: false,
    disable_root: true,
    // One host key, the fast one: RSA and ECDSA key generation cost seconds per boot under emulation.
    ssh_genkeytypes: ['ed25519'],
  };
  if (o.hostKey) {
    // cloud-init (cc_ssh) deletes the image's host keys, writes these two files and generates no
    // other type (ssh_genkeytypes applies only without ssh_keys), all before sshd starts.
    doc.ssh_deletekeys = true;
    doc.ssh_keys = { ed25519_private: o.hostKey.privateKey, ed25519_public: o.hostKey.publicKey.trim() };
  }
  if (o.bootcmd?.length) doc.bootcmd = o.bootcmd.map((script) => ['sh', '-c', script]);
  if (o.files?.length) {
    doc.write_files = o.files.map((f) => ({ path: f.path, content: f.content, append: true }));
  }
  if (o.packages && o.packages.length > 0) {
    doc.package_update = true;
    doc.package_upgrade = false;
    doc.packages = [...o.packages];
  }
  return `#cloud-config\n${JSON.stringify(doc, null, 2)}\n`;
}

export function metaData(o: SeedOptions): string {
  return `instance-id: ${o.instanceId ?? `ryra-${randomUUID()}`}\nlocal-hostname: ${o.hostname}\n`;
}

export function seedIso(o: SeedOptions): Buffer {
  return buildIso('cidata', [
    { name: 'user-data', data: userData(o) },
    { name: 'meta-data', data: metaData(o) },
  ]);
}

export function writeSeedIso(file: string, o: SeedOptions): void {
  fs.writeFileSync(file, seedIso(o));
}

// The SSH key every snapshot has baked in (the seed's `test-ssh-key`). One per repository through
// the remote tiers, so snapshots saved by one runner are usable on another (a snapshot's key names
// it): each run looks it up in every tier it uses, like a layer, through the one restore path; the
// first tier's key wins, a tier that lacks it gets it, and snapshots go only to tiers that hold the
// key they were made with. A restored key is checked in a staging dir (two plain files, a valid
// ed25519 pair) before it replaces anything. VMs that
// `ryra-vm boot` starts get a key of their own (vms.ts); this one stays for tools that restore
// snapshots themselves.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { plannedPath } from '../cache/confine.js';
import { hashOf, readManifest, type Manifest } from '../cache/manifest.js';
import { restoreEntry, type PlannedEntry } from '../cache/staged.js';
import type { RemoteTier } from '../cache/tier.js';
import { log } from '../log.js';
import { CacheFiles, MANIFEST_SUFFIX } from '../names.js';
import { checkedKey, ensureKeyFile, writeKeyFiles, type KeyPair } from '../vm/ssh.js';
import { RECIPE_VERSION } from './plan.js';

/** The SSH key's remote entry. */
export const SSH_KEY_CACHE_KEY = `ryra-vm-v${RECIPE_VERSION}-ssh-key`;

/** Why `priv`/`pub` are not one usable ed25519 key pair (each valid, and the same key); undefined when they are. */
export function keyPairProblem(priv: string, pub: string): string | undefined {
  const a = checkedKey(priv);
  const b = checkedKey(pub);
  if (!a.key || !b.key) return a.problem ?? b.problem;
  if (!a.key.isPrivateKey()) return 'the private key file holds no private key';
  return a.key.getPublicSSH().equals(b.key.getPublicSSH()) ? undefined : 'the public key file does not match the private key';
}

/** The key entry as a planned entry: two plain files that are one valid ed25519 pair (nothing is placed). */
function keyEntry(names: [string, string]): PlannedEntry<KeyPair> {
  return {
    key: SSH_KEY_CACHE_KEY,
    files: names,
    maxBytes: 64 * 1024,
    what: 'the SSH key',
    async accept(staging) {
      const [privateKey, publicKey] = names.map((n) => fs.readFileSync(plannedPath(staging, names, n), 'utf8'));
      const why = keyPairProblem(privateKey, publicKey);
      return why ? { field: 'key', why } : { ok: { privateKey, publicKey } };
    },
  };
}

/** The run's SSH key, and the tiers (labels) that hold it: the only ones a snapshot may be saved to. */
export interface RunKey {
  key: KeyPair;
  keyTiers: string[];
}

const samePublic = (a: string, b: string) => a.trim().split(/\s+/).slice(0, 2).join(' ') === b.trim().split(/\s+/).slice(0, 2).join(' ');

/**
 * The repository's key, kept in step with the tiers: every run looks the key up in each tier it
 * uses (one small entry, like a layer's), through the one restore path. The first tier that holds
 * a valid key gives the key (a local one that differs is replaced, with one line naming the
 * snapshots that are rebuilt for it); a tier that lacks the key gets it; a tier that holds another
 * key is said once and gets no snapshot of this run (its snapshots are keyed by its own key).
 */
export async function ensureSshKey(dir: string, tiers: RemoteTier[], save = true): Promise<RunKey> {
  const file = path.join(dir, CacheFiles.sshKey);
  const names: [string, string] = [CacheFiles.sshKey, `${CacheFiles.sshKey}.pub`];
  const had = fs.existsSync(file) && fs.existsSync(`${file}.pub`);
  let key = ensureKeyFile(file);
  const on = tiers.filter((t) => t.on);
  const holding: string[] = [];
  const lacking: RemoteTier[] = [];
  let adoptedFrom: string | undefined;
  const adopt = (k: KeyPair, tier: RemoteTier) => {
    const old = key;
    writeKeyFiles(file, { privateKey: k.privateKey, publicKey: k.publicKey.trim() });
    key = ensureKeyFile(file);
    adoptedFrom = tier.label;
    if (had) {
      const stale = snapshotsKeyedBy(dir, old.publicKey);
      log.info(`SSH key: the repository's key (from the ${tier.label}) replaces this cache dir's; ${stale.length ? `the snapshots made with the old one are rebuilt (${stale.join(', ')})` : 'no snapshot here was made with the old one'}`);
    } else log.info(`SSH key: the repository's key, from the ${tier.label}`);
  };
  for (const tier of on) {
    const found = await restoreEntry(dir, [tier], keyEntry(names), "using this runner's key");
    if (!found) {
      lacking.push(tier);
    } else if (samePublic(found.value.publicKey, key.publicKey)) {
      holding.push(tier.label);
    } else if (!holding.length && !adoptedFrom) {
      adopt(found.value, tier);
      holding.push(tier.label);
    } else {
      log.warning(`SSH key: the ${tier.label} holds another key than the ${adoptedFrom ?? holding[0]} (whose key this run uses); no snapshot of this run is saved there`);
    }
  }
  for (const tier of save ? lacking : []) {
    const saved = await tier.save(SSH_KEY_CACHE_KEY, names, dir);
    if (saved === 'saved') {
      holding.push(tier.label);
      continue;
    }
    if (saved !== 'exists') continue;
    // Another job saved its key first: the first key a tier holds is the repository's.
    const found = await restoreEntry(dir, [tier], keyEntry(names), "using this runner's key");
    if (!found) continue;
    if (samePublic(found.value.publicKey, key.publicKey)) holding.push(tier.label);
    else if (!holding.length) {
      adopt(found.value, tier);
      holding.push(tier.label);
    }
  }
  return { key, keyTiers: holding };
}

/** Snapshot layers in `dir` whose recorded key is `publicKey` (their base names). */
function snapshotsKeyedBy(dir: string, publicKey: string): string[] {
  const want = hashOf(publicKey.trim());
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(MANIFEST_SUFFIX))
    .map((f) => readManifest(path.join(dir, f)))
    .filter((m): m is Manifest => !!m && (m.layer === 'snapshot' || m.layer === 'browser-snapshot') && m.inputs.sshKey === want)
    .map((m) => m.files[0].name.replace(/\.qcow2$/, ''));
}

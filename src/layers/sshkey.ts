// The SSH key every snapshot has baked in (the seed's `test-ssh-key`). One per repository through
// the remote tiers, so snapshots saved by one runner are usable on another (a snapshot's key names
// it): a tier's key wins; a local key a tier lacks is saved there; a marker file remembers that this
// cache dir's key is the repository's, so later runs ask no tier. A restored key is checked in a
// staging dir (two plain files, a valid ed25519 pair) before it replaces anything. VMs that
// `ryra-vm boot` starts get a key of their own (vms.ts); this one stays for tools that restore
// snapshots themselves.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stagedFilesProblem } from '../cache/confine.js';
import { tempPath } from '../cache/local.js';
import type { RemoteTier } from '../cache/tier.js';
import { log } from '../log.js';
import { CacheFiles } from '../names.js';
import { checkedKey, ensureKeyFile, type KeyPair } from '../vm/ssh.js';
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

export async function ensureSshKey(dir: string, tiers: RemoteTier[], save = true): Promise<KeyPair> {
  const file = path.join(dir, CacheFiles.sshKey);
  const shared = `${file}.shared`;
  const names = [CacheFiles.sshKey, `${CacheFiles.sshKey}.pub`];
  const local = () => fs.existsSync(file) && fs.existsSync(`${file}.pub`);
  const on = tiers.filter((t) => t.on);
  if (!on.length || (local() && fs.existsSync(shared) && fs.readFileSync(shared, 'utf8').trim() === SSH_KEY_CACHE_KEY)) return ensureKeyFile(file);
  const markShared = () => fs.writeFileSync(shared, SSH_KEY_CACHE_KEY + '\n');
  /** The repository's key from a tier, checked, in place of any local one. */
  const adopt = async (tier: RemoteTier): Promise<boolean> => {
    const staging = tempPath(dir, 'ssh-key-restore');
    fs.mkdirSync(staging, { mode: 0o700 });
    try {
      const got = await tier.restore(SSH_KEY_CACHE_KEY, names, staging, { maxBytes: 1 << 20 });
      if (got !== 'restored') {
        if (got.startsWith('refused: ')) log.warning(`${tier.label} entry ${SSH_KEY_CACHE_KEY} refused: ${got.slice(9)}; using a key of this runner's`);
        if (got.startsWith('refused: ')) tier.refused?.(SSH_KEY_CACHE_KEY);
        return false;
      }
      const at = (n: string) => path.join(staging, n);
      const why = stagedFilesProblem(staging, names) ?? keyPairProblem(fs.readFileSync(at(names[0]), 'utf8'), fs.readFileSync(at(names[1]), 'utf8'));
      if (why) {
        log.warning(`${tier.label} entry ${SSH_KEY_CACHE_KEY} refused: ${why}; using a key of this runner's`);
        tier.refused?.(SSH_KEY_CACHE_KEY);
        return false;
      }
      fs.chmodSync(at(names[0]), 0o600);
      const before = local() ? fs.readFileSync(`${file}.pub`, 'utf8') : undefined;
      fs.renameSync(at(names[1]), `${file}.pub`);
      fs.renameSync(at(names[0]), file);
      if (before !== undefined && before !== fs.readFileSync(`${file}.pub`, 'utf8')) {
        log.info(`SSH key: the repository's key (${tier.label}) replaces this cache dir's; snapshots made with the old one are rebuilt`);
      }
      return true;
    } finally {
      fs.rmSync(staging, { recursive: true, force: true });
    }
  };
  for (const [i, tier] of on.entries()) {
    if (!(await adopt(tier))) continue;
    log.info(`SSH key: the repository's key, from the ${tier.label}`);
    // The tiers before it lack the key (or held a refused one): they get this one.
    if (save) for (const t of on.slice(0, i)) await t.save(SSH_KEY_CACHE_KEY, names, dir);
    markShared();
    return ensureKeyFile(file);
  }
  ensureKeyFile(file);
  if (!save) return ensureKeyFile(file);
  let anySaved = false;
  for (const tier of on) {
    const saved = await tier.save(SSH_KEY_CACHE_KEY, names, dir);
    // Another job may have saved its key first: then use that one, so all snapshots agree.
    if (saved === 'exists' && (await adopt(tier))) log.info(`SSH key: another job saved one to the ${tier.label} first; using it`);
    if (saved !== 'failed') anySaved = true;
  }
  if (anySaved) markShared();
  return ensureKeyFile(file);
}

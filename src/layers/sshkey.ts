// The SSH key every snapshot has baked in (the seed's `test-ssh-key`). One per repository through
// the Actions cache, so snapshots saved by one runner are usable on another (a snapshot's key names
// it): the key in the Actions cache wins; a local key the cache lacks is saved there; a marker file
// remembers that this cache dir's key is the repository's, so later runs ask the service nothing.
// VMs that `ryra-vm boot` starts get a key of their own (vms.ts); this one stays for tools that
// restore snapshots themselves.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ActionsCache } from '../cache/actions.js';
import { tempPath } from '../cache/local.js';
import { log } from '../log.js';
import { CacheFiles } from '../names.js';
import { ensureKeyFile, type KeyPair } from '../vm/ssh.js';
import { RECIPE_VERSION } from './plan.js';

/** The SSH key's Actions cache entry. */
export const SSH_KEY_CACHE_KEY = `ryra-vm-v${RECIPE_VERSION}-ssh-key`;

export async function ensureSshKey(dir: string, cache: ActionsCache | undefined): Promise<KeyPair> {
  const file = path.join(dir, CacheFiles.sshKey);
  const shared = `${file}.shared`;
  const names = [CacheFiles.sshKey, `${CacheFiles.sshKey}.pub`];
  const local = () => fs.existsSync(file) && fs.existsSync(`${file}.pub`);
  if (!cache || (local() && fs.existsSync(shared) && fs.readFileSync(shared, 'utf8').trim() === SSH_KEY_CACHE_KEY)) return ensureKeyFile(file);
  const markShared = () => fs.writeFileSync(shared, SSH_KEY_CACHE_KEY + '\n');
  /** The repository's key from the Actions cache, in place of any local one. */
  const adopt = async (): Promise<boolean> => {
    const staging = tempPath(dir, 'ssh-key-restore');
    fs.mkdirSync(staging);
    try {
      if ((await cache.restore(SSH_KEY_CACHE_KEY, names, staging)) !== 'restored') return false;
      const before = local() ? fs.readFileSync(`${file}.pub`, 'utf8') : undefined;
      fs.renameSync(path.join(staging, names[1]), `${file}.pub`);
      fs.renameSync(path.join(staging, names[0]), file);
      if (before !== undefined && before !== fs.readFileSync(`${file}.pub`, 'utf8')) {
        log.info('SSH key: the repository\'s key (Actions cache) replaces this cache dir\'s; snapshots made with the old one are rebuilt');
      }
      return true;
    } finally {
      fs.rmSync(staging, { recursive: true, force: true });
    }
  };
  if (await adopt()) {
    log.info('SSH key: the repository\'s key, from the Actions cache');
    markShared();
    return ensureKeyFile(file);
  }
  ensureKeyFile(file);
  const saved = await cache.save(SSH_KEY_CACHE_KEY, names, dir);
  // Another job may have saved its key first: then use that one, so all snapshots agree.
  if (saved === 'exists' && (await adopt())) log.info('SSH key: another job saved one first; using it');
  if (saved !== 'failed') markShared();
  return ensureKeyFile(file);
}

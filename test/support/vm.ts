// Guests for assertions: a restore of a run record's snapshot through the engine, and a QEMU
// started by hand from a plain argv (as a tool outside this project would), reached over SSH.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { restoreFrom, type RunRecord } from '../../src/record.js';
import { restoreMachine } from '../../src/vm/boot.js';
import type { Machine } from '../../src/vm/machine.js';
import { freePort } from '../../src/vm/machine.js';
import { fillRecipe } from '../../src/vm/spec.js';
import { hostKeyFor, waitForSsh, type SshClient } from '../../src/vm/ssh.js';

/** Restores the record's snapshot into a fresh dir under `root`, logging in with the shared key. */
export function restoreRecord(rec: RunRecord, root: string, name = 'check', browser = false): Promise<{ machine: Machine; readyMs: number }> {
  return restoreMachine({ ...restoreFrom(rec, browser), name, workDir: fs.mkdtempSync(path.join(root, `${name}-`)), sshTimeoutMs: 300_000 });
}

/** Runs `cmd` in a VM restored from the record, then destroys it; returns stdout. */
export async function inRestoredVm(rec: RunRecord, root: string, cmd: string): Promise<string> {
  const { machine } = await restoreRecord(rec, root);
  try {
    return (await machine.check(cmd, cmd)).stdout.trim();
  } finally {
    await machine.destroy();
  }
}

/** Starts `qemu argv` as is and waits for SSH on `port` with the record's key; kills it after `fn`. */
export async function withPlainQemu<T>(rec: RunRecord, qemu: string, argv: string[], port: number, fn: (c: SshClient) => Promise<T>): Promise<T> {
  const q = spawn(qemu, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  q.stderr.on('data', (x) => (err += x));
  const died = new Promise<never>((_, reject) => q.once('exit', (c) => reject(new Error(`QEMU exited ${c}: ${err}`))));
  died.catch(() => {});
  try {
    const privateKey = fs.readFileSync(rec.outputs['ssh-key'], 'utf8');
    const c = await waitForSsh({ port, user: rec.outputs['ssh-user'], privateKey, hostKey: hostKeyFor({ privateKey }).publicKey }, { timeoutMs: 300_000, abort: died });
    try {
      return await fn(c);
    } finally {
      c.end();
    }
  } finally {
    q.kill('SIGKILL');
  }
}

/**
 * Restores the record's snapshot from its recipe alone, as a tool outside this project would: copies
 * of the disk and vars in a dir under `root`, the tokens filled, `-loadvm ready`; `fn` gets SSH.
 */
export async function withRecipeRestore<T>(rec: RunRecord, root: string, fn: (c: SshClient) => Promise<T>): Promise<T> {
  const d = fs.mkdtempSync(path.join(root, 'recipe-'));
  fs.mkdirSync(path.join(d, 'share'));
  fs.copyFileSync(rec.restore!.disk, path.join(d, 'disk.qcow2'));
  fs.copyFileSync(rec.restore!.efivars, path.join(d, 'efivars.qcow2'));
  const port = await freePort();
  const argv = fillRecipe(rec.restore!.argv, { disk: path.join(d, 'disk.qcow2'), efivars: path.join(d, 'efivars.qcow2'), sshPort: String(port), serialLog: path.join(d, 'serial.log'), shareDir: path.join(d, 'share') });
  return withPlainQemu(rec, rec.qemu, [...argv, '-monitor', 'none', '-loadvm', 'ready'], port, fn);
}

// Workspace sync between the runner and a guest: one tar stream over one SSH exec each way (not a
// round trip per file), symlinks kept as symlinks, modes, empty dirs and any file name (lists are
// NUL-separated, names travel as bytes). After the script, only what changed comes back, and on
// the host only what the script deleted is deleted. The host never writes through a symlink: the
// stream is unpacked into an empty staging dir, then moved in entry by entry, checking that no
// directory on the way is a symlink.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import type { ExecOptions, ExecResult } from './vm/ssh.js';

/** Runs a command in the guest (an SSH exec). */
export type Exec = (command: string, opts?: ExecOptions) => Promise<ExecResult>;

/** One entry of a tree as GNU find prints it: type, size, mtime, ctime, mode, link target; and its path. */
export interface Entry {
  /** `f` file, `d` dir, `l` symlink, other letters for the rest. */
  type: string;
  stamp: string;
  /** Path relative to the root, as bytes (latin1-decoded, so any byte survives). */
  path: string;
}

/** find's output for a tree: a stamp and a path per entry, each NUL-terminated. */
export const FIND_STATE = `find . -mindepth 1 -printf '%y/%s/%T@/%C@/%m/%l\\0%P\\0'`;

export function parseState(buf: Buffer): Map<string, Entry> {
  const parts = buf.toString('latin1').split('\0');
  const out = new Map<string, Entry>();
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const stamp = parts[i];
    const p = parts[i + 1];
    if (!p) continue;
    out.set(p, { type: stamp[0], stamp, path: p });
  }
  return out;
}

/**
 * What to bring back: entries new or changed since `before` (a changed dir comes back as itself,
 * not its whole content), and entries gone (deepest first).
 */
export function diffStates(before: Map<string, Entry>, after: Map<string, Entry>): { changed: string[]; deleted: string[] } {
  const changed: string[] = [];
  for (const [p, e] of after) {
    const was = before.get(p);
    if (!was || was.stamp !== e.stamp) {
      // A dir's own stamp changes whenever an entry in it is added or removed; its entries say what.
      if (was && was.type === 'd' && e.type === 'd' && sameMode(was.stamp, e.stamp)) continue;
      changed.push(p);
    }
  }
  const deleted = [...before.keys()].filter((p) => !after.has(p)).sort((a, b) => b.split('/').length - a.split('/').length);
  return { changed: changed.sort(), deleted };
}

function sameMode(a: string, b: string): boolean {
  return a.split('/')[4] === b.split('/')[4];
}

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Paths from the guest: relative, no `..`, no empty components. */
export function safeRelative(p: string): boolean {
  return p.length > 0 && !p.startsWith('/') && !p.split('/').some((c) => c === '' || c === '.' || c === '..');
}

function collect(): { sink: Writable; bytes: () => Buffer } {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return { sink, bytes: () => Buffer.concat(chunks) };
}

function tarProcess(args: string[], cwd: string): { stdin: NodeJS.WritableStream; stdout: NodeJS.ReadableStream; done: Promise<void> } {
  const child = spawn('tar', args, { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar ${args.join(' ')} exited ${code}: ${stderr.trim().split('\n').slice(-5).join('\n')}`))));
  });
  child.stdin.on('error', () => {});
  // Consumed from the start: Node drains (discards) the output of a child that exits before
  // anything reads it, and the SSH channel it goes to opens later.
  const stdout = child.stdout.pipe(new PassThrough());
  return { stdin: child.stdin, stdout, done };
}

export interface SyncOptions {
  hostDir: string;
  guestDir: string;
  excludes?: string[];
}

/** The staging dirs of an interrupted sync-back never travel. */
const STAGING_PREFIX = '.ryra-sync-';
const excludeArgs = (o: SyncOptions) => [`--exclude=./${STAGING_PREFIX}*`, ...(o.excludes ?? []).map((e) => `--exclude=${e}`)];

/**
 * Host → guest: the workspace as one tar stream into the guest dir (made and owned by the guest
 * user), then the guest's view of it, to compare with after the script.
 */
export async function syncIn(exec: Exec, o: SyncOptions): Promise<Map<string, Entry>> {
  const tar = tarProcess(['-c', '--format=posix', '-f', '-', ...excludeArgs(o), '.'], o.hostDir);
  const g = shq(o.guestDir);
  const state = collect();
  const stderr = new PassThrough();
  let err = '';
  stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const r = await exec(
    // sudo only where the user cannot make the dir (a sudo costs seconds in an emulated guest).
    `set -e; mkdir -p ${g} 2>/dev/null || sudo install -d -o "$(id -u)" -g "$(id -g)" ${g}; cd ${g}; tar -x -p -f - --no-same-owner --warning=no-unknown-keyword; ${FIND_STATE}`,
    { stdin: tar.stdout, stdout: state.sink, stderr },
  );
  await tar.done;
  if (r.code !== 0) throw new Error(`syncing ${o.hostDir} into the guest failed (exit ${r.code}): ${err.trim().split('\n').slice(-5).join('\n')}`);
  return parseState(state.bytes());
}

/**
 * Guest → host: what changed since `before` comes back as one tar stream; what the script deleted
 * is deleted. Returns the counts.
 */
export async function syncBack(exec: Exec, o: SyncOptions, before: Map<string, Entry>): Promise<{ changed: number; deleted: number }> {
  const g = shq(o.guestDir);
  const now = collect();
  const r1 = await exec(`cd ${g} && ${FIND_STATE}`, { stdout: now.sink });
  if (r1.code !== 0) throw new Error(`listing ${o.guestDir} in the guest failed (exit ${r1.code}): ${r1.stderr.trim()}`);
  const { changed, deleted } = diffStates(before, parseState(now.bytes()));
  const staging = fs.mkdtempSync(path.join(o.hostDir, STAGING_PREFIX));
  try {
    if (changed.length) {
      const tar = tarProcess(['-x', '-p', '-f', '-', '--no-same-owner', '--warning=no-unknown-keyword'], staging);
      const list = Buffer.from(changed.map((p) => p + '\0').join(''), 'latin1');
      const stderr = new PassThrough();
      let err = '';
      stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      const r2 = await exec(`cd ${g} && tar -c --format=posix --null --no-recursion ${excludeArgs(o).map(shq).join(' ')} -T - -f -`, {
        input: list,
        stdout: tar.stdin as unknown as Writable,
        stderr,
      });
      tar.stdin.end();
      await tar.done;
      if (r2.code !== 0) throw new Error(`packing the changes in the guest failed (exit ${r2.code}): ${err.trim().split('\n').slice(-5).join('\n')}`);
      moveIn(staging, o.hostDir);
    }
    let removed = 0;
    for (const p of deleted) if (removeInside(o.hostDir, p)) removed++;
    return { changed: changed.length, deleted: removed };
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

/** `root` (a name as the host spells it) joined with `rel` (bytes from the guest, latin1-carried): a byte path. */
function bp(root: string, rel: string): Buffer {
  return rel ? Buffer.concat([Buffer.from(root), Buffer.from('/'), Buffer.from(rel, 'latin1')]) : Buffer.from(root);
}

function lstat(p: Buffer): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch {
    return undefined;
  }
}

/** True when every directory between `root` and `rel`'s parent is a real directory (no symlink). */
function parentsAreDirs(root: string, rel: string): boolean {
  const parts = rel.split('/').slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const st = lstat(bp(root, parts.slice(0, i).join('/')));
    if (st && !st.isDirectory()) return false;
  }
  return true;
}

/** Makes every directory on the way to `rel` a real directory (a symlink or file there is replaced). */
function realParents(root: string, rel: string): void {
  const parts = rel.split('/').slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const p = bp(root, parts.slice(0, i).join('/'));
    const st = lstat(p);
    if (st?.isDirectory()) continue;
    if (st) fs.rmSync(p, { force: true });
    fs.mkdirSync(p);
  }
}

/** Moves the staged tree into `root`, entry by entry, never through a symlink. */
function moveIn(staging: string, root: string): void {
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(bp(staging, rel), { encoding: 'buffer' })) {
      const r = rel ? `${rel}/${name.toString('latin1')}` : name.toString('latin1');
      const src = bp(staging, r);
      const dst = bp(root, r);
      const st = fs.lstatSync(src);
      // A symlink on the way (the host's own, or one the script turned into a directory) is
      // replaced by a real directory rather than followed out of the workspace.
      if (!parentsAreDirs(root, r)) realParents(root, r);
      const cur = lstat(dst);
      if (st.isDirectory()) {
        if (cur && !cur.isDirectory()) fs.rmSync(dst, { force: true });
        if (!cur || !cur.isDirectory()) fs.mkdirSync(dst);
        walk(r);
        fs.chmodSync(dst, st.mode & 0o7777);
        fs.utimesSync(dst, st.atime, st.mtime);
      } else {
        if (cur?.isDirectory()) fs.rmSync(dst, { recursive: true, force: true });
        fs.renameSync(src, dst);
      }
    }
  };
  walk('');
}

/** Deletes `rel` under `root` (a file, symlink or empty dir), only when no directory on the way is a symlink. */
function removeInside(root: string, rel: string): boolean {
  if (!safeRelative(rel) || !parentsAreDirs(root, rel)) return false;
  const p = bp(root, rel);
  const st = lstat(p);
  if (!st) return false;
  try {
    if (st.isDirectory()) fs.rmdirSync(p);
    else fs.unlinkSync(p);
    return true;
  } catch {
    return false; // a directory that still holds what the host put there meanwhile
  }
}

// Workspace sync between the runner and a guest: one tar stream over one SSH exec each way (not a
// round trip per file), symlinks kept as symlinks, modes, empty dirs, sparse files and any file name
// (lists are NUL-separated, names travel as bytes). After the script, only what changed comes back,
// and on the host only what the script deleted is deleted.
//
// Everything the guest sends is untrusted (a script with root there can replace find and tar): its
// listings are parsed strictly and capped, the changes come back within a byte budget and a time
// bound, and they are unpacked into an empty staging dir and checked there before they touch the
// workspace: only regular files, directories and symlinks move in, without setuid, setgid or sticky
// bits, symlinks only when their targets stay inside the workspace, and never through a symlink.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import type { ExecOptions, ExecResult } from './vm/ssh.js';

/** Runs a command in the guest (an SSH exec). */
export type Exec = (command: string, opts?: ExecOptions) => Promise<ExecResult>;

/** One entry of a tree as GNU find prints it: type, size, mtime, ctime, mode, link target; and its path. */
export interface Entry {
  /** `f` file, `d` dir, `l` symlink, other letters for the rest. */
  type: string;
  /** Apparent size in bytes, as the guest claims it (planning only: the staging dir has the real one). */
  size: number;
  stamp: string;
  /** Path relative to the root, as bytes (latin1-decoded, so any byte survives). */
  path: string;
}

/** find's output for a tree: a stamp and a path per entry, each NUL-terminated. */
export const FIND_STATE = `find . -mindepth 1 -printf '%y/%s/%T@/%C@/%m/%l\\0%P\\0'`;

/** A listing larger than this is refused (a million entries take ~100 MiB). */
export const MAX_LISTING_BYTES = 512 * 2 ** 20;
/** Counted per entry on top of a file's size: its tar headers (pax records, a long name, a sparse map). */
export const ENTRY_BYTES = 4096;
/** Default time bound of a sync-back (listing, transfer and unpacking). */
export const SYNC_BACK_TIMEOUT_MS = 30 * 60_000;

const STAMP_RE = /^([A-Za-z?])\/(\d+)\/-?\d+(?:\.\d+)?\/-?\d+(?:\.\d+)?\/[0-7]{1,6}\//;

/**
 * Parses a listing made by FIND_STATE. Malformed input (from a replaced find) is an error naming
 * `what`, never a guess: paths must be relative, without `.`/`..`/empty components, and unique.
 */
export function parseState(buf: Buffer, what = 'the guest dir'): Map<string, Entry> {
  const parts = buf.toString('latin1').split('\0');
  const out = new Map<string, Entry>();
  const bad = (i: number, why: string): never => {
    throw new Error(`the guest's listing of ${what} is malformed at entry ${i / 2 + 1} (${why}): was find replaced in the guest?`);
  };
  if (parts.pop() !== '' || parts.length % 2) bad(parts.length, 'not NUL-terminated stamp/path pairs');
  for (let i = 0; i < parts.length; i += 2) {
    const stamp = parts[i];
    const p = parts[i + 1];
    const m = STAMP_RE.exec(stamp);
    if (!m) bad(i, `stamp ${JSON.stringify(stamp.slice(0, 60))}`);
    if (!safeRelative(p)) bad(i, `path ${JSON.stringify(p.slice(0, 200))}`);
    if (out.has(p)) bad(i, `path ${JSON.stringify(p.slice(0, 200))} listed twice`);
    out.set(p, { type: m![1], size: Number(m![2]), stamp, path: p });
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

/** The types that come back: regular files, directories, symlinks (never FIFOs, sockets or devices). */
const SYNCED_TYPES = new Set(['f', 'd', 'l']);

/** Budget cost of an entry: its header allowance, plus a regular file's apparent size (a sparse file counts in full). */
export const entryCost = (type: string, size: number) => ENTRY_BYTES + (type === 'f' ? size : 0);

export interface SyncPlan {
  /** Entries to ask the guest for, within the budget. */
  wanted: string[];
  /** Their total cost. */
  bytes: number;
  /** Entries of other types, never brought back. */
  special: string[];
  /** Files that do not fit in the budget. */
  overBudget: string[];
}

/** Splits the changed entries into what comes back and what does not (in path order, first fit). */
export function planSyncBack(changed: string[], after: Map<string, Entry>, budget: number): SyncPlan {
  const plan: SyncPlan = { wanted: [], bytes: 0, special: [], overBudget: [] };
  for (const p of changed) {
    const e = after.get(p)!;
    if (!SYNCED_TYPES.has(e.type)) plan.special.push(p);
    else if (plan.bytes + entryCost(e.type, e.size) > budget) plan.overBudget.push(p);
    else {
      plan.bytes += entryCost(e.type, e.size);
      plan.wanted.push(p);
    }
  }
  return plan;
}

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Paths from the guest: relative, no `..`, no empty components. */
export function safeRelative(p: string): boolean {
  return p.length > 0 && !p.startsWith('/') && !p.split('/').some((c) => c === '' || c === '.' || c === '..');
}

/** Collects a command's output up to `max` bytes; past it, `over` is set and the rest dropped. */
function collect(max = MAX_LISTING_BYTES): { sink: Writable; bytes: () => Buffer; over: () => boolean } {
  const chunks: Buffer[] = [];
  let n = 0;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      if (n <= max) chunks.push(chunk);
      cb();
    },
  });
  return { sink, bytes: () => Buffer.concat(chunks), over: () => n > max };
}

function tarProcess(args: string[], cwd: string): { child: ChildProcessWithoutNullStreams; stdout: NodeJS.ReadableStream; done: Promise<void> } {
  // The C locale: names in tar's listings are escaped byte by byte, whatever they hold.
  const child = spawn('tar', args, { cwd, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar ${args.join(' ')} exited ${code}: ${stderr.trim().split('\n').slice(-5).join('\n')}`))));
  });
  done.catch(() => {});
  child.stdin.on('error', () => {});
  // Consumed from the start: Node drains (discards) the output of a child that exits before
  // anything reads it, and the SSH channel it goes to opens later.
  const stdout = child.stdout.pipe(new PassThrough());
  return { child, stdout, done };
}

export interface SyncOptions {
  hostDir: string;
  guestDir: string;
  excludes?: string[];
  /** Byte budget of a sync-back (see entryCost). Default: unlimited. */
  maxBytes?: number;
  /** Time bound of a sync-back (and of a sync-in). Default SYNC_BACK_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Stops a sync-back that has not finished (a cancelled step's bound): nothing of it is kept. */
  signal?: AbortSignal;
}

/** The staging dirs of an interrupted sync-back never travel. */
const STAGING_PREFIX = '.ryra-sync-';
const excludeArgs = (o: SyncOptions) => [`--exclude=./${STAGING_PREFIX}*`, ...(o.excludes ?? []).map((e) => `--exclude=${e}`)];
/**
 * On the host's unpacking, a pattern written `./name` also holds for a member named without the
 * `./` (which only a forged tar sends): anchored, so it matches that one path, as `./name` does.
 */
const hostExcludeArgs = (o: SyncOptions) => [
  ...excludeArgs(o),
  '--anchored',
  ...[`./${STAGING_PREFIX}*`, ...(o.excludes ?? [])].filter((e) => e.startsWith('./')).map((e) => `--exclude=${e.slice(2)}`),
  '--no-anchored',
];

/** What a sync-in leaves to compare with after the script. */
export interface SyncedIn {
  /** The guest's view of its dir after the sync-in. */
  guest: Map<string, Entry>;
  /** The paths the host sent: the only ones a sync-back may delete. */
  sent: Set<string>;
}

/** A name as GNU tar lists it with --quoting-style=escape in the C locale, back to its bytes (latin1-carried). */
export function unescapeTarName(s: string): string {
  const named: Record<string, string> = { n: '\n', t: '\t', r: '\r', f: '\f', v: '\v', a: '\x07', b: '\b' };
  return s.replace(/\\([0-7]{3}|.)/g, (_, c: string) => (c.length === 3 ? String.fromCharCode(parseInt(c, 8)) : (named[c] ?? c)));
}

/** The paths of tar's verbose listing (`./a`, `./dir/`), as relative paths. */
export function parseTarIndex(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const p = unescapeTarName(line).replace(/^\.\//, '').replace(/\/$/, '');
    if (p && p !== '.') out.add(p);
  }
  return out;
}

/**
 * Host → guest: the workspace as one tar stream into the guest dir (made and owned by the guest
 * user), then the guest's view of it, to compare with after the script.
 */
export async function syncIn(exec: Exec, o: SyncOptions): Promise<SyncedIn> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-sync-in-'));
  try {
    const index = path.join(tmp, 'sent');
    const guest = await syncInListed(exec, o, ['-v', `--index-file=${index}`, '--quoting-style=escape']);
    return { guest, sent: parseTarIndex(fs.readFileSync(index, 'latin1')) };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

async function syncInListed(exec: Exec, o: SyncOptions, listArgs: string[]): Promise<Map<string, Entry>> {
  const tar = tarProcess(['-c', '--format=posix', '--sparse', ...listArgs, '-f', '-', ...excludeArgs(o), '.'], o.hostDir);
  const g = shq(o.guestDir);
  const state = collect();
  const stderr = new PassThrough();
  let err = '';
  stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-20_000)));
  const timeoutMs = o.timeoutMs ?? SYNC_BACK_TIMEOUT_MS;
  const r = await exec(
    // sudo only where the user cannot make the dir (a sudo costs seconds in an emulated guest).
    `set -e; mkdir -p ${g} 2>/dev/null || sudo install -d -o "$(id -u)" -g "$(id -g)" ${g}; cd ${g}; tar -x -p -f - --no-same-owner --warning=no-unknown-keyword; ${FIND_STATE}`,
    { stdin: tar.stdout, stdout: state.sink, stderr, timeoutMs },
  ).catch((e: Error) => {
    tar.child.kill('SIGKILL');
    throw /timed out/.test(e.message) ? new Error(`syncing ${o.hostDir} into the guest took longer than its bound of ${Math.round(timeoutMs / 1000)} s`) : e;
  });
  await tar.done;
  if (r.code !== 0) throw new Error(`syncing ${o.hostDir} into the guest failed (exit ${r.code}): ${err.trim().split('\n').slice(-5).join('\n')}`);
  if (state.over()) throw new Error(`the guest's listing of ${o.guestDir} exceeds ${MAX_LISTING_BYTES >> 20} MiB: too many entries to sync (exclude some with --exclude)`);
  return parseState(state.bytes(), o.guestDir);
}

export interface SyncBackResult {
  changed: number;
  deleted: number;
  /** Symlinks not created: their targets lead outside the workspace. */
  outsideLinks: string[];
  /** FIFOs, sockets, devices and the like: never brought back. */
  special: string[];
  /** Files that did not fit in the byte budget: they stay in the guest. */
  overBudget: string[];
  /**
   * Paths the script replaced or deleted where the host keeps what it did not send (an excluded
   * subtree, a file made during the step): left as the host has them.
   */
  conflicts: string[];
}

/**
 * Guest → host: what changed since `before` comes back as one tar stream, within the byte budget
 * and the time bound; what the script deleted or replaced is deleted or replaced only if the host
 * had sent it (never what it did not send: an excluded subtree, a file made during the step).
 * Returns what it did and what it refused.
 */
export async function syncBack(exec: Exec, o: SyncOptions, synced: SyncedIn): Promise<SyncBackResult> {
  const before = synced.guest;
  const budget = o.maxBytes ?? Infinity;
  const timeoutMs = o.timeoutMs ?? SYNC_BACK_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  const timedOut = () => new Error(`syncing ${o.guestDir} back took longer than its bound of ${Math.round(timeoutMs / 1000)} s`);
  const g = shq(o.guestDir);
  const now = collect();
  const r1 = await exec(`cd ${g} && ${FIND_STATE}`, { stdout: now.sink, timeoutMs: left(), signal: o.signal }).catch((e: Error) => {
    throw /timed out/.test(e.message) ? timedOut() : e;
  });
  if (r1.code !== 0) throw new Error(`listing ${o.guestDir} in the guest failed (exit ${r1.code}): ${r1.stderr.trim()}`);
  if (now.over()) throw new Error(`the guest's listing of ${o.guestDir} exceeds ${MAX_LISTING_BYTES >> 20} MiB: too many entries to sync back (exclude some with --exclude)`);
  const after = parseState(now.bytes(), o.guestDir);
  const { changed, deleted } = diffStates(before, after);
  const plan = planSyncBack(changed, after, budget);
  const result: SyncBackResult = { changed: 0, deleted: 0, outsideLinks: [], special: plan.special, overBudget: plan.overBudget, conflicts: [] };
  const staging = fs.mkdtempSync(path.join(o.hostDir, STAGING_PREFIX));
  try {
    // The whole stream is in before the workspace is touched.
    if (plan.wanted.length) await receive(exec, o, plan, staging, left(), timedOut);
    // Deletions first, so a dir the script turned into a file or link is empty when that takes its
    // place, unless it holds what the host did not send. The guest's listings could name anything
    // (an excluded path, one the host made meanwhile): only what the host sent is deleted.
    const conflicts: string[] = [];
    for (const p of deleted) {
      if (!synced.sent.has(p)) continue;
      const r = removeInside(o.hostDir, p);
      if (r === 'removed') result.deleted++;
      else if (r === 'kept') conflicts.push(p);
    }
    if (plan.wanted.length) {
      const moved = moveIn(staging, o.hostDir, new Set(plan.wanted), budget, synced.sent);
      result.changed = moved.moved;
      result.outsideLinks = moved.outsideLinks;
      result.special = [...new Set([...plan.special, ...moved.special])].sort();
      result.overBudget = [...new Set([...plan.overBudget, ...moved.overBudget])].sort();
      conflicts.push(...moved.conflicts);
    }
    // A dir kept for what it holds is named once, not once per sent entry the script deleted in it.
    const all = new Set(conflicts);
    result.conflicts = [...all].filter((p) => !p.split('/').some((_, i, a) => i > 0 && all.has(a.slice(0, i).join('/')))).sort();
    return result;
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

/**
 * The planned entries as one tar stream from the guest, unpacked into `staging` by the host's tar
 * (sparse members stay sparse; the excludes apply here too, whatever the guest's tar did). The
 * stream may not exceed what the plan allows, nor the time left.
 */
async function receive(exec: Exec, o: SyncOptions, plan: SyncPlan, staging: string, timeoutMs: number, timedOut: () => Error): Promise<void> {
  const tar = tarProcess(['-x', '-p', '-f', '-', '--no-same-owner', '--warning=no-unknown-keyword', ...hostExcludeArgs(o)], staging);
  // Names as `./name`, the form the excludes are written for (as in the stream going in).
  const list = Buffer.from(plan.wanted.map((p) => `./${p}\0`).join(''), 'latin1');
  const bound = plan.bytes + 2 ** 20;
  const abort = new AbortController();
  let received = 0;
  // Forwards to tar with backpressure; once tar has stopped reading (at its end-of-archive mark),
  // the rest (the record's padding) is dropped so the channel still ends.
  let tarGone = false;
  let waiting: (() => void) | undefined;
  const release = () => {
    const w = waiting;
    waiting = undefined;
    w?.();
  };
  tar.child.stdin.once('close', () => ((tarGone = true), release()));
  tar.child.once('close', () => ((tarGone = true), release()));
  const counter = new Writable({
    write(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      if (received > bound) {
        abort.abort(new Error(`the guest sent more than the ${bound} bytes its ${plan.wanted.length} changed entries can take: sync-back stopped, nothing of it kept`));
        return cb();
      }
      if (tarGone || tar.child.stdin.write(chunk)) return cb();
      waiting = cb;
      tar.child.stdin.once('drain', release);
    },
  });
  const stderr = new PassThrough();
  let err = '';
  stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-20_000)));
  const timer = setTimeout(() => abort.abort(timedOut()), timeoutMs);
  const stop = () => abort.abort(o.signal!.reason);
  if (o.signal?.aborted) stop();
  o.signal?.addEventListener('abort', stop, { once: true });
  try {
    const r = await exec(`cd ${shq(o.guestDir)} && tar -c --format=posix --sparse --null --no-recursion ${excludeArgs(o).map(shq).join(' ')} -T - -f -`, {
      input: list,
      stdout: counter,
      stderr,
      signal: abort.signal,
    });
    tar.child.stdin.end();
    await tar.done;
    if (r.code !== 0) throw new Error(`packing the changes in the guest failed (exit ${r.code}): ${err.trim().split('\n').slice(-5).join('\n')}`);
  } catch (e) {
    tar.child.kill('SIGKILL');
    throw e;
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', stop);
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

/**
 * Makes every directory on the way to `rel` a real directory: a symlink or file there is replaced
 * if the host sent it; false (nothing changed past that point) where it did not.
 */
function realParents(root: string, rel: string, sent: Set<string>): boolean {
  const parts = rel.split('/').slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const q = parts.slice(0, i).join('/');
    const p = bp(root, q);
    const st = lstat(p);
    if (st?.isDirectory()) continue;
    if (st && !sent.has(q)) return false;
    if (st) fs.rmSync(p, { force: true });
    fs.mkdirSync(p);
  }
  return true;
}

/**
 * Clears the way for the guest's `rel` where the host has `cur`: true when there is nothing, or
 * what the host sent (a dir is removed only once empty; a file or symlink is left for the caller
 * to replace). Never what the host did not send.
 */
function makeRoom(root: string, rel: string, cur: fs.Stats | undefined, sent: Set<string>): boolean {
  if (!cur) return true;
  if (!sent.has(rel)) return false;
  if (!cur.isDirectory()) return true;
  try {
    fs.rmdirSync(bp(root, rel));
    return true;
  } catch {
    return false; // it holds what the host did not send (excluded, or made during the step)
  }
}

const MAX_LINK_HOPS = 40;

/**
 * Where a symlink at `dir` (components under `root`) with `target` leads, following the symlinks
 * now under `root` like the kernel would: the components it reaches, or undefined when it leaves
 * `root` (or loops). Past a component that does not exist the rest is taken by its letter.
 * Written by hand: path.resolve ignores symlinks, and realpath needs every component to exist.
 */
export function resolveInside(root: string, dir: string[], target: string, hops = { n: 0 }): string[] | undefined {
  const rootName = Buffer.from(root).toString('latin1');
  let stack: string[];
  let rest: string[];
  if (target.startsWith('/')) {
    if (target !== rootName && !target.startsWith(rootName + '/')) return undefined;
    stack = [];
    rest = target.slice(rootName.length).split('/');
  } else {
    stack = [...dir];
    rest = target.split('/');
  }
  let exists = true;
  for (const c of rest) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (!stack.length) return undefined;
      stack.pop();
      continue;
    }
    stack.push(c);
    if (!exists) continue;
    const here = bp(root, stack.join('/'));
    const st = lstat(here);
    if (!st) exists = false;
    else if (st.isSymbolicLink()) {
      if (++hops.n > MAX_LINK_HOPS) return undefined;
      stack.pop();
      const next = resolveInside(root, stack, fs.readlinkSync(here, { encoding: 'buffer' }).toString('latin1'), hops);
      if (!next) return undefined;
      stack = next;
    }
  }
  return stack;
}

/**
 * Moves the staged tree into `root`, entry by entry, never through a symlink. Only entries the plan
 * asked for move (and the dirs on their way, which keep the host's mode); only files, dirs and
 * symlinks; setuid, setgid and sticky bits are dropped; files past the budget stay out; symlinks
 * come last, and only those whose targets stay inside `root` once all of them are in place.
 */
function moveIn(staging: string, root: string, wanted: Set<string>, budget: number, sent: Set<string>): { moved: number; outsideLinks: string[]; special: string[]; overBudget: string[]; conflicts: string[] } {
  const out = { moved: 0, outsideLinks: [] as string[], special: [] as string[], overBudget: [] as string[], conflicts: [] as string[] };
  const ancestors = new Set<string>();
  for (const p of wanted) for (let i = p.indexOf('/'); i > 0; i = p.indexOf('/', i + 1)) ancestors.add(p.slice(0, i));
  const links: string[] = [];
  let bytes = 0;
  const walk = (rel: string) => {
    const dir = bp(staging, rel);
    // A staged dir the guest made unreadable is still walked (its own mode is applied on the host).
    fs.chmodSync(dir, 0o700);
    for (const name of fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare)) {
      const r = rel ? `${rel}/${name.toString('latin1')}` : name.toString('latin1');
      const asked = wanted.has(r);
      if (!asked && !ancestors.has(r)) continue; // the guest's tar sent what nobody asked for
      const src = bp(staging, r);
      const dst = bp(root, r);
      const st = fs.lstatSync(src);
      if (st.isSymbolicLink()) {
        if (asked) links.push(r);
        continue;
      }
      if (!st.isDirectory() && !st.isFile()) {
        out.special.push(r);
        continue;
      }
      if (st.isFile()) {
        if (!asked) continue;
        if (bytes + entryCost('f', st.size) > budget) {
          out.overBudget.push(r);
          continue;
        }
        bytes += entryCost('f', st.size);
      }
      // A symlink on the way (the host's own, or one the script turned into a directory) is
      // replaced by a real directory rather than followed out of the workspace.
      if (!parentsAreDirs(root, r) && !realParents(root, r, sent)) {
        out.conflicts.push(r);
        continue;
      }
      const cur = lstat(dst);
      if (st.isDirectory()) {
        if (cur && !cur.isDirectory()) {
          if (!makeRoom(root, r, cur, sent)) {
            out.conflicts.push(r);
            continue;
          }
          fs.rmSync(dst, { force: true });
        }
        if (!cur || !cur.isDirectory()) fs.mkdirSync(dst);
        walk(r);
        // A dir the host made during the step keeps its own mode; the guest's entries go in.
        if (asked && (!cur || sent.has(r))) {
          fs.chmodSync(dst, st.mode & 0o777);
          fs.utimesSync(dst, st.atime, st.mtime);
          out.moved++;
        }
      } else {
        fs.chmodSync(src, st.mode & 0o777);
        if (!makeRoom(root, r, cur, sent)) {
          out.conflicts.push(r);
          continue;
        }
        fs.renameSync(src, dst);
        out.moved++;
      }
    }
  };
  walk('');

  const dirOf = (r: string) => r.split('/').slice(0, -1);
  const targetOf = (p: Buffer) => fs.readlinkSync(p, { encoding: 'buffer' }).toString('latin1');
  const placed: string[] = [];
  const outside = new Set<string>();
  for (const r of links) {
    if (!resolveInside(root, dirOf(r), targetOf(bp(staging, r)))) {
      outside.add(r);
      continue;
    }
    const dst = bp(root, r);
    if ((!parentsAreDirs(root, r) && !realParents(root, r, sent)) || !makeRoom(root, r, lstat(dst), sent)) {
      out.conflicts.push(r);
      continue;
    }
    fs.renameSync(bp(staging, r), dst);
    placed.push(r);
  }
  // A link judged before another was placed may lead out through it: check the placed ones again
  // until none does (removing links only takes ways out away).
  for (let again = true; again; ) {
    again = false;
    for (const r of placed) {
      const p = bp(root, r);
      if (outside.has(r) || resolveInside(root, dirOf(r), targetOf(p))) continue;
      fs.unlinkSync(p);
      outside.add(r);
      again = true;
    }
  }
  out.moved += placed.filter((r) => !outside.has(r)).length;
  out.outsideLinks = [...outside].sort();
  return out;
}

/**
 * Deletes `rel` under `root` (a file, symlink or empty dir), only when no directory on the way is a
 * symlink: `kept` when it stays (a dir that holds what the host did not send), `gone` when absent.
 */
function removeInside(root: string, rel: string): 'removed' | 'kept' | 'gone' {
  if (!safeRelative(rel)) return 'gone';
  const p = bp(root, rel);
  const st = lstat(p);
  if (!st) return 'gone';
  if (!parentsAreDirs(root, rel)) return 'kept';
  try {
    if (st.isDirectory()) fs.rmdirSync(p);
    else fs.unlinkSync(p);
    return 'removed';
  } catch {
    return 'kept'; // a directory that still holds what the host did not send
  }
}

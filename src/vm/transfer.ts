// Recursive file copy between the host and a guest over ssh2's SFTP (files and directories, modes kept).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { SFTPWrapper, Stats } from 'ssh2';

const p = <T>(fn: (cb: (err: Error | null | undefined, v: T) => void) => void): Promise<T> =>
  new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v))));

async function remoteStat(sftp: SFTPWrapper, file: string): Promise<Stats | undefined> {
  return p<Stats>((cb) => sftp.stat(file, cb)).catch(() => undefined);
}

async function remoteLstat(sftp: SFTPWrapper, file: string): Promise<Stats | undefined> {
  return p<Stats>((cb) => sftp.lstat(file, cb)).catch(() => undefined);
}

/** A name the guest listed: one path component, never `.`, `..` or one holding a `/`. */
function checkRemoteName(name: string, dir: string): void {
  if (!name || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new Error(`refusing the name ${JSON.stringify(name)} listed in the guest's ${dir}: not a plain file name`);
  }
}

/** The local path exists as a symlink: nothing is written through it. */
function refuseSymlink(local: string): void {
  try {
    if (fs.lstatSync(local).isSymbolicLink()) throw new Error(`refusing to write through the symlink ${local}`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Host → guest. Into an existing remote directory, the source keeps its name (like cp -r). */
export async function upload(sftp: SFTPWrapper, src: string, dst: string): Promise<number> {
  const existing = await remoteStat(sftp, dst);
  const target = existing?.isDirectory() ? path.posix.join(dst, path.basename(src)) : dst;
  return uploadTo(sftp, src, target);
}

async function uploadTo(sftp: SFTPWrapper, src: string, dst: string): Promise<number> {
  const st = fs.statSync(src);
  if (st.isDirectory()) {
    if (!(await remoteStat(sftp, dst))) await p<void>((cb) => sftp.mkdir(dst, { mode: st.mode & 0o7777 }, (e) => cb(e, undefined)));
    let n = 0;
    for (const e of fs.readdirSync(src)) n += await uploadTo(sftp, path.join(src, e), path.posix.join(dst, e));
    return n;
  }
  await p<void>((cb) => sftp.fastPut(src, dst, { mode: st.mode & 0o7777 }, (e) => cb(e, undefined)));
  return 1;
}

/** Guest → host. Into an existing local directory, the source keeps its name. */
export async function download(sftp: SFTPWrapper, src: string, dst: string): Promise<number> {
  const target = fs.existsSync(dst) && fs.statSync(dst).isDirectory() ? path.join(dst, path.posix.basename(src)) : dst;
  return downloadTo(sftp, src, target);
}

/** Guest → host, never outside `dst`: names are checked, links are recreated as links, not followed. */
async function downloadTo(sftp: SFTPWrapper, src: string, dst: string, top = true): Promise<number> {
  const st = top ? await remoteStat(sftp, src) : await remoteLstat(sftp, src);
  if (!st) throw new Error(`no such file in the guest: ${src}`);
  refuseSymlink(dst);
  if (st.isSymbolicLink()) {
    const target = await p<string>((cb) => sftp.readlink(src, cb));
    fs.symlinkSync(target, dst);
    return 1;
  }
  if (st.isDirectory()) {
    fs.mkdirSync(dst, { recursive: true, mode: st.mode & 0o7777 });
    const entries = await p<{ filename: string }[]>((cb) => sftp.readdir(src, cb));
    let n = 0;
    for (const e of entries) {
      checkRemoteName(e.filename, src);
      n += await downloadTo(sftp, path.posix.join(src, e.filename), path.join(dst, e.filename), false);
    }
    return n;
  }
  await p<void>((cb) => sftp.fastGet(src, dst, (e) => cb(e, undefined)));
  fs.chmodSync(dst, st.mode & 0o7777);
  return 1;
}

// What a remote tier restored is data, checked in its private staging dir before anything of it
// reaches the cache dir: the one place the rules live, for every tier.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** A file name that stays in the dir it is joined to: no separator, not `.` or `..`, no control bytes. */
export function isPlainName(name: unknown): name is string {
  return typeof name === 'string' && name.length > 0 && name.length <= 255 && name !== '.' && name !== '..' && /^[A-Za-z0-9._+-]+$/.test(name);
}

/**
 * The one way a name becomes a path under a dir: `name` must be one of the caller's `planned` names
 * (each a plain name), and the path is made from the planned string, not from `name`.
 */
export function plannedPath(dir: string, planned: readonly string[], name: string): string {
  const i = planned.indexOf(name);
  if (i < 0 || !isPlainName(planned[i])) throw new Error(`${(JSON.stringify(name) ?? String(name)).slice(0, 120)} is not one of the planned plain file names (${planned.join(', ')})`);
  return path.join(dir, planned[i]);
}

/** A new private staging dir (0700) under `parent`. */
export function makeStaging(parent: string, name: string): string {
  fs.mkdirSync(parent, { recursive: true });
  return fs.mkdtempSync(path.join(parent, `${name}-`));
}

/**
 * Why `staging` does not hold exactly `files`, each a plain regular file of its own (no symlink,
 * no hard link, nothing else beside them); undefined when it does. The files are then made 0644
 * (no mode bit from the entry survives).
 */
export function stagedFilesProblem(staging: string, files: string[]): string | undefined {
  const want = new Set(files);
  const extra: string[] = [];
  for (const d of fs.readdirSync(staging, { withFileTypes: true })) {
    if (!want.has(d.name)) extra.push(`${d.isDirectory() ? 'dir' : d.isSymbolicLink() ? 'symlink' : d.isFile() ? 'file' : 'special file'} ${JSON.stringify(d.name)}`);
  }
  if (extra.length) return `unexpected ${extra.slice(0, 4).join(', ')}${extra.length > 4 ? ` and ${extra.length - 4} more` : ''}`;
  for (const f of files) {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(path.join(staging, f));
    } catch {
      return `${f} is missing`;
    }
    if (st.isSymbolicLink()) return `${f} is a symlink`;
    if (!st.isFile()) return `${f} is not a regular file`;
    if (st.nlink !== 1) return `${f} is a hard link`;
    fs.chmodSync(path.join(staging, f), 0o644);
  }
  return undefined;
}

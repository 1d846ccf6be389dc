// Where the runtime state lives: under RUNNER_TEMP in Actions (wiped after the job), else a
// per-user directory; and which job a shell belongs to.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InputError } from './inputs.js';

/** The runtime dir's path, without touching it. */
export function runtimeDirPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.RYRA_VM_RUNTIME_DIR) return path.resolve(env.RYRA_VM_RUNTIME_DIR);
  if (env.RUNNER_TEMP) return path.join(env.RUNNER_TEMP, 'ryra-vm');
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, 'ryra-vm');
  return path.join(os.tmpdir(), `ryra-vm-${process.getuid?.() ?? 'user'}`);
}

/**
 * The runtime dir, made (0700) if it is missing. Its run records name the QEMU binary that `boot`
 * runs and its VM records the keys ssh uses, so a dir someone else could have made or written
 * (the /tmp fallback is a predictable name) is refused.
 */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  const dir = runtimeDirPath(env);
  const problem = privateDirProblem(dir);
  if (problem) {
    throw new InputError(`the runtime dir ${dir} ${problem}; it must be this user's own directory with mode 0700 (remove it, chmod 700 it if it is yours, or set RYRA_VM_RUNTIME_DIR to another path)`);
  }
  return dir;
}

/** Makes `dir` with mode 0700 when it is missing; says why an existing one is not this user's private dir. */
export function privateDirProblem(dir: string): string | undefined {
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.chmodSync(dir, 0o700); // whatever the umask took away
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink()) return 'is a symlink';
  if (!st.isDirectory()) return 'is not a directory';
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return `belongs to uid ${st.uid}, not to this user (uid ${uid})`;
  if ((st.mode & 0o777) !== 0o700) return `has mode 0${(st.mode & 0o777).toString(8)}, not 0700`;
  return undefined;
}

/**
 * The variable that tells which job a shell belongs to: the action exports it to later steps, and
 * ~/.ssh/config lets `ssh NAME` reach a job's VMs only where it holds that job's id.
 */
export const JOB_ENV = 'RYRA_VM_JOB';
const JOB_RE = /^[A-Za-z0-9_-]{0,64}$/;

/** This process's job id; '' outside Actions (one user, one runtime dir, one set of VM names). */
export function jobId(env: NodeJS.ProcessEnv = process.env): string {
  const v = env[JOB_ENV] ?? '';
  if (!JOB_RE.test(v)) throw new InputError(`invalid ${JOB_ENV}: ${JSON.stringify(v)} (letters, digits, _ and -, at most 64; the action sets it for the job's later steps)`);
  return v;
}

export function newJobId(): string {
  return randomBytes(8).toString('hex');
}

// Process facts from /proc: whether a pid runs, when it started (a pid plus its start time names
// one process, even after the pid is reused), and whether its command line names something.
import * as fs from 'node:fs';

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Field 22 of /proc/PID/stat (clock ticks after boot), or '' when the process is gone. */
export function processStartTime(pid: number): string {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

/** True when `pid` runs and its command line contains `marker` (a work dir it was started with). */
export function processNamed(pid: number, marker: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

/** Every process below `pid` (children, their children, …), from the parent pids in /proc. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  for (let queue = [pid]; queue.length; ) {
    const next = children.get(queue.shift()!) ?? [];
    out.push(...next);
    queue.push(...next);
  }
  return out;
}

/**
 * When `pid` started, in ms since the epoch (to about a second: the boot time is in whole seconds),
 * or undefined when it is not running. Clock ticks are USER_HZ, 100 on Linux.
 */
export function processStartedMs(pid: number): number | undefined {
  const ticks = Number(processStartTime(pid));
  if (!ticks) return undefined;
  const btime = /^btime (\d+)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'))?.[1];
  return btime ? Number(btime) * 1000 + ticks * 10 : undefined;
}

/**
 * Whether the process that made something at `madeMs` (a file's birth time) as pid `pid` still
 * runs: a live pid that started after that is another process that got the number again (pid_max is
 * 32768 on many hosts; a busy build machine wraps it within minutes).
 */
export function ownerAlive(pid: number, madeMs: number): boolean {
  if (!processAlive(pid)) return false;
  const started = processStartedMs(pid);
  return started === undefined || !(madeMs > 0) || started <= madeMs + 1000;
}

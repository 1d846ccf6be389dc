// Machine: one running QEMU guest — spawn from a recipe, wait for SSH, run commands, snapshot,
// power off, destroy. Every layer and the CLI use it; nothing else builds QEMU or SSH arguments.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { heartbeat, log } from '../log.js';
import { GuestFiles } from '../names.js';
import { retry, sleep, withTimeout } from '../util/time.js';
import { Qmp } from './qmp.js';
import { controlArgs, fillRecipe } from './spec.js';
import { SshClient, SshConnectionError, waitForSsh, type ExecOptions, type ExecResult } from './ssh.js';

export interface MachineOptions {
  qemu: string;
  name: string;
  /** The machine's own directory (serial log, pid file, stderr); see makeWorkDir. */
  workDir: string;
  /** The device layout with its per-VM tokens (spec.ts `recipe`). */
  recipe: readonly string[];
  disk: string;
  efivars: string;
  /** The virtfs share's directory, when the recipe has one. */
  shareDir?: string;
  /** Restore this internal snapshot at start (`-loadvm`). */
  loadvm?: string;
  /** Arguments after everything else (test hooks). */
  extraArgs?: string[];
  user: string;
  privateKey: string;
  /** The guest's SSH host key (public line): every connection pins it. */
  hostKey: string;
  /** Keep QEMU running after this process exits (the CLI's `boot`). */
  detached?: boolean;
}

/** A guest command's bound unless the caller names one. */
export const GUEST_COMMAND_TIMEOUT_MS = 10 * 60_000;
/** From spawn to a QMP handshake: QEMU that has not opened its monitor by then is stuck. */
const START_TIMEOUT_MS = 30_000;
const HOSTFWD_FAILURE = /host ?forward|hostfwd/i;
/** The rule QEMU names when it cannot listen for one: `… host forwarding rule 'tcp:127.0.0.1:8080-:80'`. */
const HOSTFWD_RULE = /host forwarding rule 'tcp:127\.0\.0\.1:(\d+)-:(\d+)'/;

/** A port forward QEMU could not listen for: not retried, the port is the caller's choice. */
export class ForwardPortError extends Error {
  override name = 'ForwardPortError';
}
const PANIC = /Kernel panic - not syncing:[^\r\n]*/;
/** cloud-init's final message (cloud-final prints it on the console): every key it installs is in place. */
const CLOUD_INIT_FINISHED = /Cloud-init v\. \S+ finished at/;

/** Creates a unique work directory, so concurrent jobs on one host never share one. */
export function makeWorkDir(name: string, base = process.env.RUNNER_TEMP || os.tmpdir()): string {
  fs.mkdirSync(base, { recursive: true });
  return fs.mkdtempSync(path.join(base, `ryra-vm-${name.replace(/[^A-Za-z0-9_.-]/g, '_')}-`));
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Printable last lines of a serial log (console escape sequences removed), from its last MiB. */
export function logTail(file: string, lines = 25): string {
  let text: string;
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(size, 2 ** 20));
    fs.readSync(fd, buf, 0, buf.length, size - buf.length);
    text = buf.toString('utf8');
  } catch {
    return '(no serial output)';
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
  const clean = text
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    .replace(/\x1b[()][A-Za-z0-9]/g, '')
    .replace(/\r/g, '')
    .replace(/[^\x09\x0a\x20-\x7e\u00a0-\uffff]/g, '');
  return clean.split('\n').filter((l) => l.trim()).slice(-lines).join('\n') || '(no serial output)';
}

/** Most a guest's serial log holds: past it, the older half is dropped (the tail explains a failure). */
export const SERIAL_LOG_MAX_BYTES = 64 * 2 ** 20;

/**
 * The serial log's only writer, run as `node -e SERIAL_WRITER SOCKET LOG MAX`. QEMU 7.2's file
 * chardev has no size limit, and VMs are detached QEMU processes that outlive the CLI, so a file
 * trimmed by our own commands (at each call, or by a watcher) would still grow without bound
 * between them. Instead QEMU writes the console to this process's unix socket; it appends to the
 * log and, when the next chunk would take it past MAX, rewrites it as its last MAX/2 bytes. It
 * takes one connection and exits when QEMU closes it (QEMU exited), so it lives exactly as long as
 * the VM. Were it gone, QEMU drops the console's output; the guest never stalls on it.
 */
const SERIAL_WRITER = `
const fs = require('fs'), net = require('net');
const [sock, file, max] = [process.argv[1], process.argv[2], Number(process.argv[3])];
let fd = fs.openSync(file, 'w+');
let size = 0;
function write(chunk) {
  if (size + chunk.length > max) {
    const keep = Math.min(size, Math.floor(max / 2));
    const tail = Buffer.alloc(keep);
    fs.readSync(fd, tail, 0, keep, size - keep);
    const next = Buffer.concat([tail, chunk]).subarray(-Math.floor(max / 2));
    fs.writeFileSync(file + '.tmp', next);
    fs.renameSync(file + '.tmp', file);
    fs.closeSync(fd);
    fd = fs.openSync(file, 'r+');
    size = next.length;
  } else {
    fs.writeSync(fd, chunk, 0, chunk.length, size);
    size += chunk.length;
  }
}
const idle = setTimeout(() => process.exit(1), 60000);
const srv = net.createServer((c) => {
  srv.close();
  clearTimeout(idle);
  c.on('data', (d) => { try { write(d); } catch { process.exit(1); } });
  c.on('close', () => process.exit(0));
  c.on('error', () => process.exit(0));
});
srv.listen(sock, () => process.stdout.write('ready\\n'));
`;

/**
 * The argv with its `-serial file:LOG` turned into the same serial port on a socket chardev (the
 * guest-visible device is unchanged, so snapshots restore under either); undefined without one.
 */
export function serialThroughSocket(argv: readonly string[], socket: string): string[] | undefined {
  const at = argv.findIndex((a, i) => argv[i - 1] === '-serial' && a.startsWith('file:'));
  if (at < 0) return undefined;
  return [...argv.slice(0, at - 1), '-chardev', `socket,id=serial0,path=${socket.replaceAll(',', ',,')}`, '-serial', 'chardev:serial0', ...argv.slice(at + 1)];
}

/** Starts the serial log's writer listening on `socket`; resolves once it listens. */
export async function startSerialWriter(socket: string, log: string, maxBytes = SERIAL_LOG_MAX_BYTES, detached = false): Promise<ChildProcess> {
  fs.rmSync(socket, { force: true });
  const child = spawn(process.execPath, ['-e', SERIAL_WRITER, socket, log, String(maxBytes)], { stdio: ['ignore', 'pipe', 'ignore'], detached });
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d).includes('ready') && resolve());
        child.once('exit', (code) => reject(new Error(`the serial log writer exited (${code}) before it listened on ${socket}`)));
        child.once('error', reject);
      }),
      START_TIMEOUT_MS,
      `the serial log writer listening on ${socket}`,
    );
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  // It exits with QEMU's connection; nothing here waits for it.
  child.stdout!.destroy();
  child.unref();
  return child;
}

const live = new Set<Machine>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort: a job or test that dies must not leave guests running.
  const killAll = () => {
    for (const m of live) m.killNow();
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAll();
      process.kill(process.pid, sig); // the default action, now that our handler is gone
    });
  }
}

export class QemuExitedError extends Error {
  override name = 'QemuExitedError';
}

/** The guest kernel panicked: it will never answer, so waiting stops at once. */
export class GuestPanicError extends Error {
  override name = 'GuestPanicError';
}

/** The guest printed nothing for longer than its bound before SSH answered. */
export class GuestStalledError extends Error {
  override name = 'GuestStalledError';
}

/**
 * Watches the serial log while a guest boots: rejects on a kernel panic line, and (with
 * `stallMs`) when nothing new was printed for that long; notes cloud-init's final message. Reads
 * only what is new each time.
 */
function watchSerial(serialLog: string, stallMs: number | undefined, everyMs = 1000): { found: Promise<never>; stop: () => void; cloudInitFinished: () => boolean } {
  let offset = 0;
  let finished = false;
  let carry = '';
  let lastGrowth = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const found = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      let fd: number | undefined;
      try {
        fd = fs.openSync(serialLog, 'r');
        const size = fs.fstatSync(fd).size;
        // The writer rewrote the log as its tail (SERIAL_WRITER): read it again from the start.
        if (size < offset) offset = 0;
        if (size > offset) {
          lastGrowth = Date.now();
          const buf = Buffer.alloc(size - offset);
          fs.readSync(fd, buf, 0, buf.length, offset);
          offset = size;
          const text = carry + buf.toString('latin1');
          carry = text.slice(-64);
          if (CLOUD_INIT_FINISHED.test(text)) finished = true;
          // The panic line itself leads: the tail is mostly the stack trace printed after it.
          const line = PANIC.exec(text)?.[0];
          if (line) reject(new GuestPanicError(`the guest kernel panicked (${line.trim()}). Serial console, last lines:\n${logTail(serialLog)}`));
        }
      } catch {
        /* no serial output yet */
      } finally {
        if (fd !== undefined) fs.closeSync(fd);
      }
      if (stallMs !== undefined && Date.now() - lastGrowth > stallMs) {
        reject(new GuestStalledError(`the guest printed nothing on its serial console for ${Math.round(stallMs / 1000)} s (${offset} bytes in all)`));
      }
    }, everyMs);
  });
  found.catch(() => {});
  return { found, stop: () => clearInterval(timer), cloudInitFinished: () => finished };
}

export class Machine {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Rejects once QEMU has exited; for racing waits against. */
  readonly died: Promise<never>;
  private ssh: SshClient | undefined;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly startedAt = Date.now();

  private constructor(
    readonly opts: MachineOptions,
    readonly sshPort: number,
    readonly argv: string[],
    private readonly child: ChildProcess,
    readonly qmp: Qmp,
    exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>,
  ) {
    this.exited = exited.then((e) => {
      this.exitInfo = e;
      live.delete(this);
      return e;
    });
    this.died = this.exited.then((e) => {
      throw new QemuExitedError(`QEMU for ${opts.name} exited (${e.code ?? e.signal}).\n${this.diagnostics()}`);
    });
    this.died.catch(() => {});
  }

  get name(): string {
    return this.opts.name;
  }
  get pid(): number {
    return this.child.pid!;
  }
  get serialLog(): string {
    return path.join(this.opts.workDir, GuestFiles.serialLog);
  }
  get qmpSocket(): string {
    return this.qmp.socketPath;
  }
  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /**
   * Starts QEMU and returns once its monitor answers; a taken SSH port is retried with another.
   * A QEMU that never opens its monitor is killed, never left behind.
   */
  static async spawn(opts: MachineOptions): Promise<Machine> {
    installExitHook();
    const serialLog = path.join(opts.workDir, GuestFiles.serialLog);
    const pidFile = path.join(opts.workDir, GuestFiles.pid);
    const stderrFile = path.join(opts.workDir, GuestFiles.stderr);
    const socketDir = makeSocketDir();
    const qmpSocket = path.join(socketDir, 'qmp.sock');
    for (let attempt = 1; ; attempt++) {
      const sshPort = await freePort();
      const filled = fillRecipe(opts.recipe, { disk: opts.disk, efivars: opts.efivars, sshPort: String(sshPort), serialLog, shareDir: opts.shareDir ?? '' });
      // The serial log is capped by a writer of ours (SERIAL_WRITER), started before QEMU connects to it.
      const serialSocket = path.join(socketDir, 'serial.sock');
      const viaSocket = serialThroughSocket(filled, serialSocket);
      const writer = viaSocket ? await startSerialWriter(serialSocket, serialLog, SERIAL_LOG_MAX_BYTES, !!opts.detached) : undefined;
      const argv = [
        ...(viaSocket ?? filled),
        ...controlArgs({ name: opts.name, qmpSocket, pidFile, loadvm: opts.loadvm }),
        ...(opts.extraArgs ?? []),
      ];
      fs.rmSync(qmpSocket, { force: true });
      const errFd = fs.openSync(stderrFile, 'w');
      log.debug(`${opts.qemu} ${argv.join(' ')}`);
      // A detached VM leaves our process group (it outlives the CLI), but its handle stays
      // referenced until release(): while we wait on it, it keeps this process alive.
      const child = spawn(opts.qemu, argv, { stdio: ['ignore', 'ignore', errFd], detached: !!opts.detached });
      fs.closeSync(errFd);
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        child.once('exit', (code, signal) => resolve({ code, signal }));
        child.once('error', () => resolve({ code: -1, signal: null }));
      });
      const qmp = await connectQmp(qmpSocket, exited);
      if (qmp) {
        const m = new Machine(opts, sshPort, argv, child, qmp, exited);
        live.add(m);
        return m;
      }
      const alive = await Promise.race([exited.then(() => false), sleep(0).then(() => true)]);
      if (alive) {
        child.kill('SIGKILL');
        await withTimeout(exited, 10_000, `QEMU ${child.pid} exiting after SIGKILL`).catch(() => {});
      }
      writer?.kill('SIGKILL'); // a QEMU that never connected leaves it waiting
      const stderr = fs.readFileSync(stderrFile, 'utf8').trim();
      const rule = HOSTFWD_RULE.exec(stderr);
      if (!alive && rule && rule[1] !== String(sshPort)) {
        fs.rmSync(socketDir, { recursive: true, force: true });
        throw new ForwardPortError(`the forward ${rule[1]}:${rule[2]}: QEMU cannot listen on 127.0.0.1:${rule[1]} (another process has that port, or it is below 1024): forward from another host port`);
      }
      if (!alive && HOSTFWD_FAILURE.test(stderr) && attempt < 5) {
        log.info(`  port ${sshPort} was taken; retrying with another`);
        continue;
      }
      fs.rmSync(socketDir, { recursive: true, force: true });
      const why = alive ? `its monitor did not answer within ${START_TIMEOUT_MS / 1000} s (killed)` : stderr || 'no error output';
      throw new QemuExitedError(`QEMU failed to start ${opts.name}: ${why}\n  command: ${opts.qemu} ${argv.join(' ')}`);
    }
  }

  /** Error context: QEMU's stderr and the serial console's last lines. */
  diagnostics(): string {
    let stderr = '';
    try {
      stderr = fs.readFileSync(path.join(this.opts.workDir, GuestFiles.stderr), 'utf8').trim();
    } catch {
      /* none */
    }
    return `${stderr ? `QEMU stderr: ${stderr}\n` : ''}Serial console (${this.serialLog}), last lines:\n${logTail(this.serialLog)}`;
  }

  /** The first line of what QEMU printed on stderr (the cause of an early exit). */
  stderrLine(): string {
    try {
      const lines = fs.readFileSync(path.join(this.opts.workDir, GuestFiles.stderr), 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
      return lines.find((l) => /error|fail|abort|assert/i.test(l)) ?? lines[0] ?? '';
    } catch {
      return '';
    }
  }

  private target(privateKey = this.opts.privateKey) {
    return { port: this.sshPort, user: this.opts.user, privateKey, hostKey: this.opts.hostKey };
  }

  /**
   * Waits until SSH logs in and runs a command; stops at once if QEMU exits or the kernel
   * panics, (with `stallMs`) when the serial console stays silent that long, and when the guest
   * refuses the key once cloud-init has finished (or at all, for a guest `restored` with the key in place).
   */
  async waitReady(timeoutMs: number, o: { label?: string; stallMs?: number; restored?: boolean } = {}): Promise<number> {
    const start = Date.now();
    const stop = heartbeat(o.label ?? `SSH on ${this.name}`, timeoutMs);
    const watch = watchSerial(this.serialLog, o.stallMs);
    try {
      const refusalFinal = () => (o.restored ? 'the guest was restored from a snapshot that holds its key' : watch.cloudInitFinished() ? 'cloud-init has finished (the serial console says so)' : undefined);
      this.ssh = await waitForSsh(this.target(), { timeoutMs, abort: Promise.race([this.died, watch.found]), refusalFinal });
    } catch (err) {
      if (err instanceof QemuExitedError || err instanceof GuestPanicError || err instanceof GuestStalledError) throw err;
      throw new Error(`${(err as Error).message}\n${this.diagnostics()}`);
    } finally {
      stop();
      watch.stop();
    }
    return Date.now() - start;
  }

  /** Logs in with another key from now on (a VM's own key replaced the snapshot's). */
  useKey(privateKey: string): void {
    this.opts.privateKey = privateKey;
    this.ssh?.end();
    this.ssh = undefined;
  }

  /**
   * Runs a command over SSH, bounded by `timeoutMs` (default GUEST_COMMAND_TIMEOUT_MS). With
   * `retry`, a connection that drops before the command starts is re-established (cloud-init
   * restarts sshd right after the first login).
   */
  async exec(command: string, opts: ExecOptions & { retry?: boolean; reconnectMs?: number } = {}): Promise<ExecResult> {
    const o = { ...opts, timeoutMs: opts.timeoutMs ?? GUEST_COMMAND_TIMEOUT_MS };
    return retry(
      async () => {
        try {
          if (!this.ssh || this.ssh.isClosed) {
            this.ssh = await waitForSsh(this.target(), { timeoutMs: o.reconnectMs ?? 60_000, abort: this.died });
          }
          return await Promise.race([this.ssh.exec(command, o), this.died]);
        } catch (err) {
          this.ssh?.end();
          this.ssh = undefined;
          throw err;
        }
      },
      { attempts: 5, delayMs: () => 0, retryable: (err) => err instanceof SshConnectionError && (err.notStarted || !!o.retry) },
    );
  }

  /** Runs a command and throws (with its output) unless it exits 0. */
  async check(command: string, what: string, opts: ExecOptions & { retry?: boolean } = {}): Promise<ExecResult> {
    const r = await this.exec(command, opts);
    if (r.code !== 0) {
      const out = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-15).join('\n');
      throw new Error(`${what} failed (exit ${r.code}) on ${this.name}:\n${out}`);
    }
    return r;
  }

  /** An SSH connection for SFTP or a shell. */
  async client(): Promise<SshClient> {
    if (!this.ssh || this.ssh.isClosed) this.ssh = await waitForSsh(this.target(), { timeoutMs: 60_000, abort: this.died });
    return this.ssh;
  }

  /**
   * `cloud-init status --wait`: 0 done, 2 recoverable (a warning with the detail), else an error.
   * Returns the warning text for code 2.
   */
  async waitCloudInit(timeoutMs: number): Promise<string | undefined> {
    const stop = heartbeat(`cloud-init on ${this.name}`, timeoutMs);
    try {
      const r = await this.exec('cloud-init status --wait --long', { retry: true, timeoutMs });
      if (r.code === 0) return undefined;
      const detail = (r.stdout + r.stderr).trim().split('\n').slice(-12).join('\n');
      if (r.code === 2) return `cloud-init finished with recoverable errors on ${this.name}:\n${detail}`;
      throw new Error(`cloud-init failed (exit ${r.code}) on ${this.name}:\n${detail}`);
    } finally {
      stop();
    }
  }

  /** `savevm TAG` through QMP, bounded; returns QEMU's time for it, after checking the tag is listed. */
  async saveSnapshot(tag: string, timeoutMs: number): Promise<number> {
    const start = Date.now();
    await this.qmp.hmp(`savevm ${tag}`, timeoutMs);
    const ms = Date.now() - start;
    const list = await this.qmp.hmp('info snapshots');
    if (!new RegExp(`\\s${tag}\\s`).test(list)) throw new Error(`savevm ${tag} reported success but 'info snapshots' does not list it:\n${list}`);
    return ms;
  }

  /**
   * Clean shutdown: `poweroff` in the guest (QMP system_powerdown when SSH is gone), wait for QEMU
   * to exit, kill after `timeoutMs`. Returns whether the guest stopped by itself.
   */
  async poweroff(timeoutMs = 120_000): Promise<boolean> {
    if (!this.running) return true;
    let asked = false;
    try {
      // The connection drops as the guest goes down; only a refusal to start counts as failure.
      await this.exec('sudo sync && (sudo systemctl poweroff --no-block || sudo poweroff)', { timeoutMs: 30_000, reconnectMs: 10_000 });
      asked = true;
    } catch (err) {
      asked = err instanceof SshConnectionError && !err.notStarted;
    }
    if (!asked) await this.qmp.execute('system_powerdown').catch(() => {});
    const done = await withTimeout(this.exited, timeoutMs, `${this.name} powering off`).then(
      () => true,
      () => false,
    );
    if (!done) {
      log.warning(`${this.name} did not power off within ${timeoutMs / 1000} s; killing QEMU`);
      await this.kill();
    }
    this.ssh?.end();
    return done;
  }

  killNow(): void {
    if (!this.running) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }

  async kill(): Promise<void> {
    this.ssh?.end();
    this.qmp.close();
    this.killNow();
    await withTimeout(this.exited, 30_000, `QEMU ${this.pid} exiting after SIGKILL`).catch((err) => log.warning((err as Error).message));
  }

  /** Stops QEMU if needed and removes the machine's work directory and socket dir. */
  async destroy(): Promise<void> {
    await this.kill();
    fs.rmSync(this.opts.workDir, { recursive: true, force: true });
    fs.rmSync(path.dirname(this.qmpSocket), { recursive: true, force: true });
  }

  /** Lets this process exit while QEMU runs on (CLI `boot`). */
  /** The logged-in session, now the caller's to use and end (release() no longer ends it). */
  handOver(): SshClient | undefined {
    const s = this.ssh;
    this.ssh = undefined;
    return s && !s.isClosed ? s : undefined;
  }

  release(): void {
    this.ssh?.end();
    this.qmp.close();
    this.child.unref();
    live.delete(this);
  }
}

/**
 * A short private directory for QEMU's unix sockets: a socket path must stay under 108 bytes,
 * and work dirs under a runner's cache or temp dir can be longer than that.
 */
export function makeSocketDir(): string {
  const base = fs.existsSync('/tmp') ? '/tmp' : os.tmpdir();
  return fs.mkdtempSync(path.join(base, 'rvm-'));
}

/** Connects to QEMU's QMP socket within START_TIMEOUT_MS; undefined when QEMU exited or never listened. */
async function connectQmp(socket: string, exited: Promise<unknown>): Promise<Qmp | undefined> {
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!gone && Date.now() < deadline) {
    if (fs.existsSync(socket)) {
      try {
        return await Qmp.connect(socket, Math.max(1000, deadline - Date.now()));
      } catch {
        /* not listening yet */
      }
    }
    await sleep(25);
  }
  return undefined;
}

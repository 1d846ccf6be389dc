// Machine: one running QEMU guest — spawn from a VmSpec, wait for SSH, run commands, snapshot,
// power off, destroy. Every layer and the CLI use it; nothing else builds QEMU or SSH arguments.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { heartbeat, log } from '../log.js';
import { Qmp } from './qmp.js';
import { qemuArgv, type VmSpec } from './spec.js';
import { SshClient, SshConnectionError, waitForSsh, type ExecOptions, type ExecResult } from './ssh.js';

/** A VmSpec minus what the Machine chooses itself (port, sockets, logs), plus how to reach it. */
export interface MachineOptions extends Omit<VmSpec, 'sshPort' | 'qmpSocket' | 'serialLog' | 'pidFile' | 'seed'> {
  /** The machine's own directory (sockets, logs, pidfile); see makeWorkDir. */
  workDir: string;
  user: string;
  privateKey: string;
  /** Keep QEMU running after this process exits (the CLI's `boot`). */
  detached?: boolean;
  seed?: boolean;
}

/** Creates a unique work directory, so concurrent jobs on one host never share one. */
export function makeWorkDir(name: string, base = process.env.RUNNER_TEMP || os.tmpdir()): string {
  fs.mkdirSync(base, { recursive: true });
  return fs.mkdtempSync(path.join(base, `ryra-vm-${name.replace(/[^A-Za-z0-9_.-]/g, '_')}-`));
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Printable last lines of a serial log (console escape sequences removed). */
export function logTail(file: string, lines = 25): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return '(no serial output)';
  }
  const clean = text
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    .replace(/\x1b[()][A-Za-z0-9]/g, '')
    .replace(/\r/g, '')
    .replace(/[^\x09\x0a\x20-\x7e\u00a0-\uffff]/g, '');
  return clean.split('\n').filter((l) => l.trim()).slice(-lines).join('\n') || '(no serial output)';
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

const PANIC = /Kernel panic - not syncing:[^\r\n]*/;

/** Rejects when the serial log shows a kernel panic; reads only what is new each time. */
function watchForPanic(serialLog: string, everyMs = 2000): { found: Promise<never>; stop: () => void } {
  let offset = 0;
  let carry = '';
  let timer: NodeJS.Timeout | undefined;
  const found = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      let fd: number | undefined;
      try {
        fd = fs.openSync(serialLog, 'r');
        const size = fs.fstatSync(fd).size;
        if (size <= offset) return;
        const buf = Buffer.alloc(size - offset);
        fs.readSync(fd, buf, 0, buf.length, offset);
        offset = size;
        const text = carry + buf.toString('latin1');
        carry = text.slice(-64);
        // The panic line itself leads: the tail is mostly the stack trace printed after it.
        const line = PANIC.exec(text)?.[0];
        if (line) reject(new GuestPanicError(`the guest kernel panicked (${line.trim()}). Serial console, last lines:\n${logTail(serialLog)}`));
      } catch {
        /* no serial output yet */
      } finally {
        if (fd !== undefined) fs.closeSync(fd);
      }
    }, everyMs);
  });
  found.catch(() => {});
  return { found, stop: () => clearInterval(timer) };
}

const HOSTFWD_FAILURE = /host ?forward|hostfwd/i;
const START_TIMEOUT_MS = 30_000;

export class Machine {
  readonly spec: VmSpec;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Rejects once QEMU has exited; for racing waits against. */
  readonly died: Promise<never>;
  private ssh: SshClient | undefined;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly startedAt = Date.now();

  private constructor(
    spec: VmSpec,
    private readonly child: ChildProcess,
    readonly qmp: Qmp,
    private readonly opts: MachineOptions,
    exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>,
  ) {
    this.spec = spec;
    this.exited = exited.then((e) => {
      this.exitInfo = e;
      live.delete(this);
      return e;
    });
    this.died = this.exited.then((e) => {
      throw new QemuExitedError(`QEMU for ${spec.name} exited (${e.code ?? e.signal}).\n${this.diagnostics()}`);
    });
    this.died.catch(() => {});
  }

  get pid(): number {
    return this.child.pid!;
  }
  get sshPort(): number {
    return this.spec.sshPort;
  }
  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** Starts QEMU and returns once its monitor answers; a taken SSH port is retried with another. */
  static async spawn(opts: MachineOptions): Promise<Machine> {
    installExitHook();
    const { workDir: _w, user: _u, privateKey: _k, detached: _d, ...vm } = opts;
    const socketDir = makeSocketDir();
    for (let attempt = 1; ; attempt++) {
      const spec: VmSpec = {
        ...vm,
        seed: !!opts.seedIso,
        sshPort: await freePort(),
        qmpSocket: path.join(socketDir, 'qmp.sock'),
        serialLog: path.join(opts.workDir, 'serial.log'),
        pidFile: path.join(opts.workDir, 'qemu.pid'),
      };
      const stderrFile = path.join(opts.workDir, 'qemu.stderr');
      fs.rmSync(spec.qmpSocket, { force: true });
      const errFd = fs.openSync(stderrFile, 'w');
      const argv = qemuArgv(spec);
      log.debug(`${opts.qemu} ${argv.join(' ')}`);
      // Only a VM meant to outlive us leaves our process group; others die with a group kill too.
      const child = spawn(opts.qemu, argv, { stdio: ['ignore', 'ignore', errFd], detached: !!opts.detached });
      fs.closeSync(errFd);
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        child.once('exit', (code, signal) => resolve({ code, signal }));
        child.once('error', () => resolve({ code: -1, signal: null }));
      });
      if (opts.detached) child.unref();
      const qmp = await connectQmp(spec.qmpSocket, exited);
      if (qmp) {
        const m = new Machine(spec, child, qmp, opts, exited);
        if (!opts.detached) live.add(m);
        return m;
      }
      const stderr = fs.readFileSync(stderrFile, 'utf8').trim();
      if (HOSTFWD_FAILURE.test(stderr) && attempt < 5) {
        log.info(`  port ${spec.sshPort} was taken; retrying with another`);
        continue;
      }
      fs.rmSync(socketDir, { recursive: true, force: true });
      throw new QemuExitedError(`QEMU failed to start ${opts.name}: ${stderr || 'no error output'}\n  command: ${opts.qemu} ${argv.join(' ')}`);
    }
  }

  /** Error context: QEMU's stderr and the serial console's last lines. */
  diagnostics(): string {
    let stderr = '';
    try {
      stderr = fs.readFileSync(path.join(this.opts.workDir, 'qemu.stderr'), 'utf8').trim();
    } catch {
      /* none */
    }
    return `${stderr ? `QEMU stderr: ${stderr}\n` : ''}Serial console (${this.spec.serialLog}), last lines:\n${logTail(this.spec.serialLog)}`;
  }

  private target() {
    return { port: this.spec.sshPort, user: this.opts.user, privateKey: this.opts.privateKey };
  }

  /** Waits until SSH logs in and runs a command; stops at once if QEMU exits. */
  async waitReady(timeoutMs: number, label = `SSH on ${this.spec.name}`): Promise<number> {
    const start = Date.now();
    const stop = heartbeat(label, timeoutMs);
    const panic = watchForPanic(this.spec.serialLog);
    try {
      this.ssh = await waitForSsh(this.target(), { timeoutMs, abort: Promise.race([this.died, panic.found]) });
    } catch (err) {
      if (err instanceof QemuExitedError || err instanceof GuestPanicError) throw err;
      throw new Error(`${(err as Error).message}\n${this.diagnostics()}`);
    } finally {
      stop();
      panic.stop();
    }
    return Date.now() - start;
  }

  /**
   * Runs a command over SSH. With `retry`, a connection that drops before the command starts is
   * re-established (cloud-init restarts sshd right after the first login).
   */
  async exec(command: string, opts: ExecOptions & { retry?: boolean; reconnectMs?: number } = {}): Promise<ExecResult> {
    for (let attempt = 1; ; attempt++) {
      try {
        if (!this.ssh || this.ssh.isClosed) {
          this.ssh = await waitForSsh(this.target(), { timeoutMs: opts.reconnectMs ?? 60_000, abort: this.died });
        }
        return await Promise.race([this.ssh.exec(command, opts), this.died]);
      } catch (err) {
        const again = err instanceof SshConnectionError && (err.notStarted || opts.retry) && attempt < 5;
        if (!again) throw err;
        this.ssh?.end();
        this.ssh = undefined;
      }
    }
  }

  /** Runs a command and throws (with its output) unless it exits 0. */
  async check(command: string, what: string, opts: ExecOptions & { retry?: boolean } = {}): Promise<ExecResult> {
    const r = await this.exec(command, opts);
    if (r.code !== 0) {
      const out = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-15).join('\n');
      throw new Error(`${what} failed (exit ${r.code}) on ${this.spec.name}:\n${out}`);
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
    const stop = heartbeat(`cloud-init on ${this.spec.name}`, timeoutMs);
    try {
      const r = await this.exec('cloud-init status --wait --long', { retry: true, timeoutMs });
      if (r.code === 0) return undefined;
      const detail = (r.stdout + r.stderr).trim().split('\n').slice(-12).join('\n');
      if (r.code === 2) return `cloud-init finished with recoverable errors on ${this.spec.name}:\n${detail}`;
      throw new Error(`cloud-init failed (exit ${r.code}) on ${this.spec.name}:\n${detail}`);
    } finally {
      stop();
    }
  }

  /** `savevm TAG` through QMP; returns when QEMU has written it (ms taken), after checking it is listed. */
  async saveSnapshot(tag: string): Promise<number> {
    const start = Date.now();
    await this.qmp.hmp(`savevm ${tag}`);
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
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)))]);
    clearTimeout(timer);
    if (!done) {
      log.warning(`${this.spec.name} did not power off within ${timeoutMs / 1000} s; killing QEMU`);
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
    await this.exited;
  }

  /** Stops QEMU if needed and removes the machine's work directory. */
  async destroy(): Promise<void> {
    await this.kill();
    fs.rmSync(this.opts.workDir, { recursive: true, force: true });
    fs.rmSync(path.dirname(this.spec.qmpSocket), { recursive: true, force: true });
  }

  /** Lets this process exit while QEMU runs on (CLI `boot`). */
  release(): void {
    this.ssh?.end();
    this.qmp.close();
    live.delete(this);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A short private directory for QEMU's unix sockets: a socket path must stay under 108 bytes,
 * and work dirs under a runner's cache or temp dir can be longer than that.
 */
export function makeSocketDir(): string {
  const base = fs.existsSync('/tmp') ? '/tmp' : os.tmpdir();
  return fs.mkdtempSync(path.join(base, 'rvm-'));
}

async function connectQmp(socket: string, exited: Promise<unknown>): Promise<Qmp | undefined> {
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!gone && Date.now() < deadline) {
    if (fs.existsSync(socket)) {
      try {
        return await Qmp.connect(socket);
      } catch {
        /* not listening yet */
      }
    }
    await sleep(25);
  }
  return undefined;
}

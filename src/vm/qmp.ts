// A QMP client over QEMU's unix socket: greeting, capabilities negotiation, commands matched to
// replies by id, asynchronous events, and HMP commands whose errors come back inside their text.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { withTimeout } from '../util/time.js';

/** A QMP command's bound unless the caller names one (savevm of a large guest names its own). */
export const QMP_COMMAND_TIMEOUT_MS = 30_000;

export class QmpError extends Error {
  override name = 'QmpError';
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

// HMP reports failures as text in a successful reply: "Error: …", "Error while …", "Could not …".
const HMP_ERROR = /^(Error|Could not|Failed|Unknown|Device '.*' (is writable|does not)|Snapshot .* (does not exist|not found))/im;

export function hmpError(output: string): string | undefined {
  const m = HMP_ERROR.exec(output);
  return m ? output.trim() : undefined;
}

export class Qmp extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, Pending>();
  private closedError: Error | undefined;

  private constructor(
    private readonly sock: net.Socket,
    readonly socketPath: string,
  ) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose(new QmpError('QMP connection closed (QEMU exited)')));
    sock.on('error', (e) => this.onClose(new QmpError(`QMP socket error: ${e.message}`)));
  }

  /** Connects, reads the greeting and negotiates capabilities, all within `timeoutMs`. */
  static async connect(socketPath: string, timeoutMs = 10_000): Promise<Qmp> {
    let sock: net.Socket | undefined;
    const connected = (async () => {
      sock = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(socketPath);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
      const qmp = new Qmp(sock, socketPath);
      await new Promise<void>((resolve, reject) => {
        qmp.once('greeting', () => resolve());
        qmp.once('closed', reject);
      });
      await qmp.execute('qmp_capabilities');
      return qmp;
    })();
    return withTimeout(connected, timeoutMs, `QMP handshake on ${socketPath}`, () => sock?.destroy());
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Runs a command; rejects with its error, or when no reply comes within `timeoutMs`. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = QMP_COMMAND_TIMEOUT_MS): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = String(this.nextId++);
    const reply = new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
    // A late reply finds no pending entry and is dropped.
    return withTimeout(reply, timeoutMs, `QMP ${command}`, () => this.pending.delete(id));
  }

  /** Runs an HMP command; rejects when its output reports an error. */
  async hmp(commandLine: string, timeoutMs = QMP_COMMAND_TIMEOUT_MS): Promise<string> {
    const out = await this.execute<string>('human-monitor-command', { 'command-line': commandLine }, timeoutMs);
    const err = hmpError(out);
    if (err) throw new QmpError(`${commandLine}: ${err}`);
    return out;
  }

  /** Resolves with the next event of this name. */
  waitEvent(name: string): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent) => {
        if (e.event !== name) return;
        this.off('event', onEvent);
        this.off('closed', onClosed);
        resolve(e);
      };
      const onClosed = (err: Error) => {
        this.off('event', onEvent);
        reject(err);
      };
      this.on('event', onEvent);
      this.once('closed', onClosed);
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) this.emit('greeting', msg.QMP);
      else if ('event' in msg) this.emit('event', msg as unknown as QmpEvent);
      else if ('id' in msg) {
        const p = this.pending.get(String(msg.id));
        if (!p) continue;
        this.pending.delete(String(msg.id));
        if ('error' in msg) {
          const e = msg.error as { class?: string; desc?: string };
          p.reject(new QmpError(`${e.class ?? 'Error'}: ${e.desc ?? 'unknown QMP error'}`));
        } else p.resolve(msg.return);
      }
    }
  }

  private onClose(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.emit('closed', err);
  }
}

// SSH to guests through ssh2: key generation, the guests' host keys (every connection pins one),
// connect-until-ready that gives up as soon as QEMU exits, and exec with streamed output and exit
// codes. One place holds the connection options.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Writable } from 'node:stream';
import { log } from '../log.js';
import { sleep } from '../util/time.js';
import ssh2, { type ClientChannel, type ParsedKey, type SFTPWrapper } from 'ssh2';

// ssh2 is CommonJS: its named exports come through the default import under Node's ESM loader.
const { Client, utils } = ssh2;

export interface SshTarget {
  port: number;
  user: string;
  privateKey: Buffer | string;
  /**
   * The guest's SSH host key (an OpenSSH public key line): a server that presents another is
   * refused. Every guest this project starts gets its host key from the seed (hostKeyFor).
   */
  hostKey: string;
  host?: string;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Copies of the command's output as it arrives (e.g. process.stdout). */
  stdout?: Writable;
  stderr?: Writable;
  /** Data written to the command's stdin, then EOF. */
  input?: string | Buffer;
  /** A stream piped into the command's stdin (with backpressure), then EOF. */
  stdin?: NodeJS.ReadableStream;
  /** Allocate a pseudo-terminal (interactive shells). */
  pty?: boolean;
  timeoutMs?: number;
  /** Aborting closes the channel at once; the result rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The connection dropped before or during a command: it may not have run, or not to its end. */
export class SshConnectionError extends Error {
  override name = 'SshConnectionError';
  constructor(
    message: string,
    /** True when the command had not started, so running it again is safe. */
    readonly notStarted: boolean,
  ) {
    super(message);
  }
}

export interface KeyPair {
  privateKey: string;
  publicKey: string;
}

export function generateKeyPair(comment = 'ryra-vm'): KeyPair {
  // Written by hand from Node's key: ssh2 1.17's generateKeyPairSync strips leading zero bytes from
  // the public key (1 key in 256 comes out 31 bytes, which sshd refuses; ssh2 issues 1390, 1513),
  // and Node exports no OpenSSH format. DER straight from the generator: exporting a KeyObject as
  // JWK can deadlock Node 20 when a GC runs inside it (seen here within 10,000 keys).
  const der = crypto.generateKeyPairSync('ed25519', { publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'der' } });
  const pub = Buffer.from(derTail(der.publicKey, SPKI_ED25519));
  const seed = Buffer.from(derTail(der.privateKey, PKCS8_ED25519));
  return checkedPair(pub, seed, comment, crypto.randomBytes(4));
}

function checkedPair(pub: Buffer, seed: Buffer, comment: string, check: Buffer): KeyPair {
  const pair = { privateKey: openSshPrivateKey(pub, seed, comment, check), publicKey: `ssh-ed25519 ${publicBlob(pub).toString('base64')}${comment ? ` ${comment}` : ''}` };
  const bad = keyProblem(pair.publicKey);
  if (bad) throw new Error(`made a broken SSH key: ${bad}`);
  return pair;
}

/**
 * HKDF's label for a guest host key: another label (or version) gives unrelated keys. A snapshot
 * holds the key in its RAM state, so the label belongs in the snapshot layers' keys.
 */
export const HOST_KEY_INFO = 'ryra-vm guest ssh host key v1';

/**
 * The SSH host key of guests that log in with `key`: an ed25519 pair derived from its private
 * key (HKDF-SHA256 over its 32-byte seed), so whoever holds the key computes the host key and
 * nobody has to read it from a guest or a cache entry. The same key gives the same pair, byte
 * for byte (the check bytes come from the seed too), so a seed that holds it does not change.
 */
export function hostKeyFor(key: Pick<KeyPair, 'privateKey'>): KeyPair {
  const parsed = checkedKey(key.privateKey);
  if (!parsed.key || !parsed.key.isPrivateKey()) throw new Error(`cannot derive a host key: the SSH key is not an ed25519 private key (${parsed.problem ?? 'a public key'})`);
  const pkcs8 = crypto.createPrivateKey(parsed.key.getPrivatePEM()).export({ type: 'pkcs8', format: 'der' });
  const seed = Buffer.from(crypto.hkdfSync('sha256', derTail(pkcs8, PKCS8_ED25519), Buffer.alloc(0), HOST_KEY_INFO, 32));
  const spki = crypto.createPublicKey(crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: 'der', type: 'pkcs8' })).export({ type: 'spki', format: 'der' });
  return checkedPair(derTail(spki, SPKI_ED25519), seed, 'ryra-vm host key', crypto.createHash('sha256').update(seed).digest().subarray(0, 4));
}

// The fixed DER prefixes of an ed25519 SubjectPublicKeyInfo and PKCS#8 key (RFC 8410); 32 key bytes follow.
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');

function derTail(der: Buffer, prefix: Buffer): Buffer {
  if (der.length !== prefix.length + 32 || !der.subarray(0, prefix.length).equals(prefix)) throw new Error(`Node made an ed25519 key in an unexpected DER form: ${der.toString('hex')}`);
  return der.subarray(prefix.length);
}

const sshString = (b: Buffer | string) => {
  const data = typeof b === 'string' ? Buffer.from(b) : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  return Buffer.concat([len, data]);
};
const uint32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const publicBlob = (pub: Buffer) => Buffer.concat([sshString('ssh-ed25519'), sshString(pub)]);

/** The unencrypted `openssh-key-v1` format (OpenSSH's PROTOCOL.key), as ssh-keygen writes it. */
function openSshPrivateKey(pub: Buffer, seed: Buffer, comment: string, check: Buffer): string {
  let secret = Buffer.concat([check, check, sshString('ssh-ed25519'), sshString(pub), sshString(Buffer.concat([seed, pub])), sshString(comment)]);
  // Padded with 1, 2, 3, … to the cipher's block size (8 for "none").
  const pad = (8 - (secret.length % 8)) % 8;
  secret = Buffer.concat([secret, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))]);
  const body = Buffer.concat([Buffer.from('openssh-key-v1\0'), sshString('none'), sshString('none'), sshString(''), uint32(1), sshString(publicBlob(pub)), sshString(secret)]);
  const lines = body.toString('base64').match(/.{1,70}/g)!;
  return ['-----BEGIN OPENSSH PRIVATE KEY-----', ...lines, '-----END OPENSSH PRIVATE KEY-----', ''].join('\n');
}

/**
 * Why an OpenSSH public key line (or a private key, by the public key inside it) is not a
 * usable ed25519 key; undefined when it is one.
 */
export function keyProblem(key: string): string | undefined {
  return checkedKey(key).problem;
}

/** The key parsed once, with what keyProblem says of it (a key only when there is no problem). */
export function checkedKey(key: string): { key: ParsedKey; problem?: undefined } | { key?: undefined; problem: string } {
  const parsed = utils.parseKey(key.trim());
  if (parsed instanceof Error) return { problem: `not an SSH key (${parsed.message})` };
  const k = Array.isArray(parsed) ? parsed[0] : parsed;
  if (k.type !== 'ssh-ed25519') return { problem: `a ${k.type} key, not ssh-ed25519` };
  const blob = k.getPublicSSH();
  const typeLen = blob.readUInt32BE(0);
  const keyLen = blob.length >= 8 + typeLen ? blob.readUInt32BE(4 + typeLen) : -1;
  if (keyLen !== 32 || blob.length !== 8 + typeLen + 32) return { problem: `its ed25519 public key is ${keyLen} bytes, not 32 (sshd refuses it)` };
  return { key: k };
}

/**
 * Writes a key pair as `<file>` (0600) and `<file>.pub` unless both exist and hold a usable key;
 * returns it. A broken key (made by an earlier version) is replaced.
 */
export function ensureKeyFile(file: string): KeyPair {
  if (fs.existsSync(file) && fs.existsSync(`${file}.pub`)) {
    fs.chmodSync(file, 0o600);
    const existing = { privateKey: fs.readFileSync(file, 'utf8'), publicKey: fs.readFileSync(`${file}.pub`, 'utf8').trim() };
    const bad = keyProblem(existing.publicKey) ?? keyProblem(existing.privateKey);
    if (!bad) return existing;
    log.warning(`the SSH key ${file} is broken (${bad}); making a new one`);
  }
  const pair = generateKeyPair();
  writeKeyFiles(file, pair);
  return pair;
}

/** `<file>` (0600) and `<file>.pub`, each written under a temp name and renamed. */
export function writeKeyFiles(file: string, pair: KeyPair): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(`${tmp}.pub`, pair.publicKey + '\n');
  fs.writeFileSync(tmp, pair.privateKey, { mode: 0o600 });
  fs.renameSync(`${tmp}.pub`, `${file}.pub`);
  fs.renameSync(tmp, file);
}

const KEEP_CHARS = 1 << 20;

export class SshClient {
  private closed = false;

  private constructor(private readonly conn: InstanceType<typeof Client>) {
    conn.on('close', () => (this.closed = true));
    conn.on('end', () => (this.closed = true));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * One connection attempt. A TCG guest's handshake alone takes 1.5-2.5 s, hence the ready timeout.
   * A server whose host key is not `target.hostKey` is refused with an SshHostKeyError (ssh2 checks
   * that the server signed the handshake with the key it presents).
   */
  static connect(target: SshTarget, readyTimeoutMs = 30_000): Promise<SshClient> {
    const expected = checkedKey(target.hostKey);
    if (!expected.key) return Promise.reject(new Error(`cannot check the SSH host key of 127.0.0.1:${target.port}: the expected key is ${expected.problem}`));
    const want = expected.key.getPublicSSH();
    let presented: Buffer | undefined;
    return new Promise((resolve, reject) => {
      const conn = new Client();
      let settled = false;
      // ssh2 may emit several errors for one failed attempt; keep a handler for all of them.
      conn.on('error', (err) => {
        if (settled) return;
        settled = true;
        conn.end();
        reject(presented && !presented.equals(want) ? new SshHostKeyError(target, presented) : err);
      });
      conn.once('ready', () => {
        settled = true;
        resolve(new SshClient(conn));
      });
      // A connection can also just close during the handshake (sshd restarting), with no error.
      conn.once('close', () => {
        if (settled) return;
        settled = true;
        reject(new Error('connection closed during the SSH handshake'));
      });
      conn.connect({
        host: target.host ?? '127.0.0.1',
        port: target.port,
        username: target.user,
        privateKey: target.privateKey,
        readyTimeout: readyTimeoutMs,
        keepaliveInterval: 10_000,
        keepaliveCountMax: 6,
        hostVerifier: (key: Buffer) => {
          presented = Buffer.from(key);
          return presented.equals(want);
        },
      });
    });
  }

  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new SshConnectionError('not connected', true));
      this.conn.exec(command, opts.pty ? { pty: true } : {}, (err, stream: ClientChannel) => {
        if (err) return reject(new SshConnectionError(`cannot start command: ${err.message}`, true));
        // The result keeps the last MiB of each stream (tar streams pass through, they are not kept).
        let stdout = '';
        let stderr = '';
        const keep = (acc: string, d: Buffer) => {
          const s = acc + d.toString();
          return s.length > 2 * KEEP_CHARS ? s.slice(-KEEP_CHARS) : s;
        };
        let code: number | undefined;
        let signal: string | undefined;
        const timer = opts.timeoutMs
          ? setTimeout(() => {
              stream.close();
              reject(new Error(`command timed out after ${opts.timeoutMs! / 1000} s: ${command.slice(0, 80)}`));
            }, opts.timeoutMs)
          : undefined;
        // A reader that has seen enough (a byte budget spent) stops the command without waiting for it.
        const onAbort = () => {
          stream.close();
          reject(opts.signal!.reason instanceof Error ? opts.signal!.reason : new Error(`command aborted: ${command.slice(0, 80)}`));
        };
        if (opts.signal?.aborted) return onAbort();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        if (opts.stdout) {
          const dest = opts.stdout;
          stream.pipe(dest, { end: false });
          // A reader that stops early (tar exits at its end-of-archive mark and leaves the record's
          // padding unread) unpipes the stream; keep draining it, or its end (and 'close') never comes.
          const drain = () => (stream.unpipe(dest), stream.resume());
          dest.once('error', drain);
          dest.once('close', drain);
        }
        if (opts.stderr) stream.stderr.pipe(opts.stderr, { end: false });
        // A stream given its own destination is not kept (it may be a tar stream): result.stdout is ''.
        if (!opts.stdout) stream.on('data', (d: Buffer) => (stdout = keep(stdout, d)));
        stream.stderr.on('data', (d: Buffer) => (stderr = keep(stderr, d)));
        stream.on('exit', (c: number | null, sig?: string) => {
          if (c !== null && c !== undefined) code = c;
          signal = sig;
        });
        stream.on('close', () => {
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          if (code !== undefined) resolve({ code, stdout, stderr });
          else if (signal) resolve({ code: 128 + 1, stdout, stderr: stderr + `\n(killed by signal ${signal})` });
          else reject(new SshConnectionError(`connection lost while running: ${command.slice(0, 80)}`, false));
        });
        if (opts.stdin) opts.stdin.pipe(stream);
        else if (opts.input !== undefined) stream.end(opts.input);
        else if (!opts.pty) stream.end();
      });
    });
  }

  /** An interactive shell wired to the given streams; resolves with its exit code. */
  shell(stdin: NodeJS.ReadableStream, stdout: Writable, term: { rows: number; cols: number; term: string }): Promise<number> {
    return new Promise((resolve, reject) => {
      this.conn.shell({ rows: term.rows, cols: term.cols, term: term.term }, (err, stream) => {
        if (err) return reject(err);
        let code = 0;
        stdin.pipe(stream);
        stream.pipe(stdout);
        stream.stderr.pipe(stdout);
        stream.on('exit', (c: number | null) => (code = c ?? 0));
        stream.on('close', () => {
          stdin.unpipe(stream);
          resolve(code);
        });
      });
    });
  }

  sftp(): Promise<SFTPWrapper> {
    return new Promise((resolve, reject) => this.conn.sftp((err, s) => (err ? reject(err) : resolve(s))));
  }

  end(): void {
    this.closed = true;
    this.conn.end();
  }
}

/**
 * True when something at the port sends an SSH banner within `timeoutMs`. QEMU's user network
 * accepts a forwarded connection before the guest can answer it, so a full handshake attempt
 * would hang until its own timeout; the banner shows sshd is really there.
 */
export function sshBanner(port: number, timeoutMs: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host, port });
    const done = (ok: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('data', (d: Buffer) => done(d.toString('latin1').startsWith('SSH-')));
    s.once('error', () => done(false));
    s.once('close', () => done(false));
  });
}

export interface WaitOptions {
  timeoutMs: number;
  /** Rejects when the guest can no longer come up (QEMU exited): the wait stops at once. */
  abort: Promise<never>;
  /** Pause between attempts. */
  retryMs?: number;
  /**
   * Why a refusal of the key, or another host key, can no longer change (cloud-init has finished,
   * so the keys it was to install are in place), or undefined while it still can: either then ends
   * the wait at once.
   */
  refusalFinal?: () => string | undefined;
}

/** What a host key line names: its type and SHA256 fingerprint, as ssh-keygen -l prints them. */
export function fingerprint(blob: Buffer): string {
  return `${blob.subarray(4, 4 + blob.readUInt32BE(0)).toString()} SHA256:${crypto.createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The server at the target's port presented another host key than the guest's. */
export class SshHostKeyError extends Error {
  override name = 'SshHostKeyError';
  constructor(
    target: Pick<SshTarget, 'port' | 'hostKey'>,
    /** The host key blob the server presented. */
    readonly presented: Buffer,
    final?: string,
  ) {
    super(
      `refused 127.0.0.1:${target.port}: its SSH host key is ${fingerprint(presented)}, not the guest's ${fingerprint(checkedKey(target.hostKey).key!.getPublicSSH())}` +
        (final ? `, and ${final}` : '') +
        ': it is not the VM this key was made for (a snapshot built before host keys were pinned, a guest whose host key was replaced, or another process on that port)',
    );
  }
}

/** The guest answers SSH but refuses the key, and nothing will change that. */
export class SshKeyRefusedError extends Error {
  override name = 'SshKeyRefusedError';
}

/** ssh2's error for a server that turned down every key offered. */
function isKeyRefusal(err: unknown): boolean {
  return (err as { level?: string })?.level === 'client-authentication' || /All configured authentication methods failed/.test((err as Error)?.message ?? '');
}

/** Connects (and proves a command runs) until it works, the overall timeout passes, or `abort` fires. */
class NoBannerYet extends Error {
  constructor() {
    super('no SSH banner yet');
  }
}

export async function waitForSsh(target: SshTarget, opts: WaitOptions): Promise<SshClient> {
  // A key ssh2 cannot read never logs in: no use waiting (its 31-byte ed25519 keys are such).
  const parsed = utils.parseKey(target.privateKey);
  if (parsed instanceof Error) throw new SshKeyRefusedError(`cannot log in to 127.0.0.1:${target.port} as ${target.user}: the key is broken (${parsed.message})`);
  const deadline = Date.now() + opts.timeoutMs;
  let last: unknown;
  let aborted: unknown;
  opts.abort.catch((e) => (aborted = e));
  for (;;) {
    if (aborted) throw aborted;
    const left = deadline - Date.now();
    if (left <= 0) break;
    try {
      const attempt = (async () => {
        if (!(await sshBanner(target.port, Math.min(3000, left), target.host))) throw new NoBannerYet();
        const c = await SshClient.connect(target, Math.min(30_000, Math.max(left, 1000)));
        const r = await c.exec('true', { timeoutMs: 30_000 }).catch((err: Error) => ({ code: -1, stderr: err.message }));
        if (r.code !== 0) {
          c.end();
          throw new Error(`'true' exited ${r.code}: ${r.stderr.trim()}`);
        }
        return c;
      })();
      attempt.catch(() => {});
      return await Promise.race([attempt, opts.abort]);
    } catch (err) {
      if (aborted) throw aborted;
      // An attempt cut short by the deadline says less than the one before it: keep what the guest said last.
      if (!(err instanceof NoBannerYet) || last === undefined || last instanceof NoBannerYet) last = err;
      log.debug(`ssh 127.0.0.1:${target.port}: ${(err as Error).message}`);
      // Another host key is final once the guest's own is in place (restored, or cloud-init done).
      const hostKeyFinal = err instanceof SshHostKeyError ? opts.refusalFinal?.() : undefined;
      if (hostKeyFinal) throw new SshHostKeyError(target, (err as SshHostKeyError).presented, hostKeyFinal);
      const final = isKeyRefusal(err) ? opts.refusalFinal?.() : undefined;
      if (final) {
        throw new SshKeyRefusedError(
          `the guest at 127.0.0.1:${target.port} answers SSH but refuses the key for ${target.user} (${(err as Error).message}), and ${final}: ` +
            'the guest does not hold the public key of the key offered (was it made with another key, or does its sshd refuse this one?)',
        );
      }
    }
    await Promise.race([sleep(opts.retryMs ?? 1000), opts.abort.catch(() => {})]);
  }
  throw new Error(`SSH to 127.0.0.1:${target.port} not ready after ${Math.round(opts.timeoutMs / 1000)} s (last error: ${(last as Error)?.message ?? 'none'})`);
}

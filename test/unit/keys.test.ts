// Every SSH key the project makes is a valid 32-byte ed25519 key that OpenSSH and ssh2 both take
// (ssh2 1.17's own generator strips leading zero bytes: 1 key in 256 is 31 bytes, which sshd
// refuses); a broken key on disk is replaced; a guest that refuses the key once that is final ends
// the wait for SSH at once, naming the cause. A guest's host key is derived from the key that logs
// in, and a server presenting another is refused before the key is offered.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, describe, test } from 'node:test';
import ssh2 from 'ssh2';
import { ensureKeyFile, generateKeyPair, hostKeyFor, keyProblem, SshClient, SshHostKeyError, SshKeyRefusedError, waitForSsh, writeKeyFiles } from '../../src/vm/ssh.js';

const { Server, utils } = ssh2;
const run = promisify(execFile);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'keys-unit-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** `ssh-keygen -l` over one authorized_keys-style file: one line per key it accepts. */
function fingerprints(publicKeys: string[], file: string): string[] {
  fs.writeFileSync(file, publicKeys.join('\n') + '\n');
  return execFileSync('ssh-keygen', ['-l', '-f', file], { encoding: 'utf8', maxBuffer: 1 << 26 }).trim().split('\n').filter(Boolean);
}

const blobBytes = (publicKey: string) => Buffer.from(publicKey.split(' ')[1], 'base64');

describe('SSH keys', () => {
  test('10,000 keys: each a 32-byte ed25519 key that ssh-keygen -l and ssh2 accept; OpenSSH reads the private halves, which sign for the public ones', async () => {
    const keys = Array.from({ length: 10_000 }, (_, i) => generateKeyPair(`ryra-vm k${i}`));
    const data = Buffer.from('ryra-vm');
    for (const [i, k] of keys.entries()) {
      const blob = blobBytes(k.publicKey);
      // string "ssh-ed25519" (4 + 11), string key (4 + 32)
      assert.equal(blob.length, 51, `key ${i}: ${k.publicKey}`);
      assert.equal(blob.readUInt32BE(15), 32, `key ${i}`);
      assert.equal(keyProblem(k.publicKey), undefined);
      const priv = utils.parseKey(k.privateKey);
      const pub = utils.parseKey(k.publicKey);
      assert.ok(!(priv instanceof Error) && !(pub instanceof Error), `key ${i}: ssh2 parses both halves`);
      const [p, q] = [Array.isArray(priv) ? priv[0] : priv, Array.isArray(pub) ? pub[0] : pub];
      assert.ok(p.getPublicSSH().equals(blob) && q.getPublicSSH().equals(blob), `key ${i}: both halves hold the public key`);
      // A signature costs ssh2 nearly 1 ms: every 40th key.
      if (i % 40 === 0) assert.equal(q.verify(data, p.sign(data)), true, `key ${i}: a signature of the private key verifies with the public one`);
    }
    const fp = fingerprints(keys.map((k) => k.publicKey), path.join(tmp, 'all.pub'));
    assert.equal(fp.length, keys.length, 'ssh-keygen -l lists every key');
    for (const [i, line] of fp.entries()) assert.match(line, new RegExp(`^256 SHA256:\\S+ ryra-vm k${i} \\(ED25519\\)$`));

    // OpenSSH reads the private halves too (ssh-keygen -y, a process per key: a sample). The
    // format varies between keys only in the padding, which the comment's length sets: every
    // padding length (0-7) is in the sample.
    const sample = keys.filter((_, i) => i % 80 === 0).concat(Array.from({ length: 8 }, (_, n) => generateKeyPair('c'.repeat(n))));
    const dir = fs.mkdtempSync(path.join(tmp, 'priv-'));
    const derived: string[] = [];
    for (let i = 0; i < sample.length; i += 16) {
      derived.push(
        ...(await Promise.all(
          sample.slice(i, i + 16).map(async (k, j) => {
            const f = path.join(dir, `k${i + j}`);
            fs.writeFileSync(f, k.privateKey, { mode: 0o600 });
            return (await run('ssh-keygen', ['-y', '-f', f])).stdout.trim();
          }),
        )),
      );
    }
    assert.deepEqual(derived, sample.map((k) => k.publicKey));
  });

  test('the check catches what ssh2 1.17 makes: its short keys (leading zero bytes stripped) are flagged, and ssh-keygen -l skips exactly those', () => {
    // 3,000 keys hold a bad one but for a chance of (255/256)^3000, about 1e-5.
    const keys = Array.from({ length: 3000 }, (_, i) => utils.generateKeyPairSync('ed25519', { comment: `s${i}` }));
    const flagged = keys.filter((k) => keyProblem(k.public) !== undefined);
    assert.ok(flagged.length > 0, 'ssh2 made a broken key');
    // ssh2's own parser refuses them too (it cannot even log in with one).
    for (const k of flagged) assert.match(keyProblem(k.public)! + keyProblem(k.private)!, /Malformed OpenSSH public key.*Malformed OpenSSH private key/);
    // 31 bytes where one leading zero byte was stripped (1 key in 256), 30 where two were (1 in 65,536:
    // about one run in 22 meets one among 3,000 keys), and so on.
    for (const k of flagged) {
      const n = blobBytes(k.public).readUInt32BE(15);
      assert.ok(n < 32 && n >= 28, `a ${n}-byte key`);
    }
    const fp = fingerprints(keys.map((k) => k.public.trim()), path.join(tmp, 'ssh2.pub'));
    const listed = new Set(fp.map((l) => l.split(' ')[2]));
    assert.deepEqual(keys.filter((k) => !listed.has(k.public.trim().split(' ')[2])), flagged);
  });

  test('a broken key file is replaced by a good one; a good one is kept', () => {
    let bad;
    do bad = utils.generateKeyPairSync('ed25519');
    while (!keyProblem(bad.public));
    const file = path.join(tmp, 'test-ssh-key');
    writeKeyFiles(file, { privateKey: bad.private, publicKey: bad.public.trim() });
    const fixed = ensureKeyFile(file);
    assert.equal(keyProblem(fixed.publicKey), undefined);
    assert.notEqual(fixed.publicKey, bad.public.trim());
    assert.equal(fs.readFileSync(`${file}.pub`, 'utf8').trim(), fixed.publicKey);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(ensureKeyFile(file), fixed);
  });
});

describe('a guest that refuses the key', () => {
  /** An SSH server that turns down every key (as sshd does a key it does not hold). */
  async function refusingServer(): Promise<{ port: number; hostKey: string; close: () => void }> {
    const hostKey = generateKeyPair();
    const server = new Server({ hostKeys: [hostKey.privateKey] }, (client) => {
      client.on('authentication', (ctx) => ctx.reject(['publickey']));
      client.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as net.AddressInfo).port, hostKey: hostKey.publicKey, close: () => server.close() };
  }
  const never = new Promise<never>(() => {});

  test('once the refusal is final, the wait ends at once naming the cause; before, it goes on', async () => {
    const s = await refusingServer();
    try {
      let asked = 0;
      // Final from the third attempt on: the first two refusals are waited through.
      const refusalFinal = () => (++asked >= 3 ? 'cloud-init has finished' : undefined);
      const key = generateKeyPair();
      const err = await waitForSsh({ port: s.port, user: 'ryra', privateKey: key.privateKey, hostKey: s.hostKey }, { timeoutMs: 120_000, abort: never, retryMs: 10, refusalFinal }).catch((e: Error) => e);
      assert.ok(err instanceof SshKeyRefusedError, String(err));
      assert.equal(asked, 3);
      assert.match(err.message, /answers SSH but refuses the key for ryra \(All configured authentication methods failed\), and cloud-init has finished: the guest does not hold the public key/);

      let bad;
      do bad = utils.generateKeyPairSync('ed25519');
      while (!keyProblem(bad.public));
      // A broken key is never tried: it could not log in anywhere.
      const err2 = await waitForSsh({ port: s.port, user: 'ryra', privateKey: bad.private, hostKey: s.hostKey }, { timeoutMs: 120_000, abort: never }).catch((e: Error) => e);
      assert.ok(err2 instanceof SshKeyRefusedError, String(err2));
      assert.match(err2.message, /cannot log in to 127\.0\.0\.1:\d+ as ryra: the key is broken \(Malformed OpenSSH private key\)/);

      // Never final: refusals are retried until the bound.
      const err3 = await waitForSsh({ port: s.port, user: 'ryra', privateKey: key.privateKey, hostKey: s.hostKey }, { timeoutMs: 1500, abort: never, retryMs: 10, refusalFinal: () => undefined }).catch((e: Error) => e);
      assert.ok(!(err3 instanceof SshKeyRefusedError));
      assert.match(String(err3), /not ready after 2 s \(last error: All configured authentication methods failed\)/);
    } finally {
      s.close();
    }
  });
});

describe('guest host keys', () => {
  test('hostKeyFor: the same key gives the same pair byte for byte; another key another pair; OpenSSH reads it; a public key is refused', async () => {
    const repo = generateKeyPair();
    const a = hostKeyFor(repo);
    assert.deepEqual(hostKeyFor({ privateKey: repo.privateKey }), a, 'computed again: identical (the seed that holds it does not change)');
    assert.equal(keyProblem(a.publicKey), undefined);
    assert.match(a.publicKey, /^ssh-ed25519 \S+ ryra-vm host key$/);
    assert.notEqual(a.publicKey.split(' ')[1], repo.publicKey.split(' ')[1], 'not the key itself');
    const others = Array.from({ length: 50 }, () => hostKeyFor(generateKeyPair()).publicKey);
    assert.equal(new Set([a.publicKey, ...others]).size, 51);
    // ssh-keygen reads the private half and finds the public one in it.
    const f = path.join(tmp, 'host-key');
    fs.writeFileSync(f, a.privateKey, { mode: 0o600 });
    assert.equal((await run('ssh-keygen', ['-y', '-f', f])).stdout.trim(), a.publicKey);
    // The private half signs for the public one (what sshd proves in every handshake).
    const [p, q] = [utils.parseKey(a.privateKey), utils.parseKey(a.publicKey)].map((k) => (Array.isArray(k) ? k[0] : k)) as ssh2.ParsedKey[];
    assert.equal(q.verify(Buffer.from('x'), p.sign(Buffer.from('x'))), true);
    assert.throws(() => hostKeyFor({ privateKey: repo.publicKey }), /cannot derive a host key: the SSH key is not an ed25519 private key/);
  });

  /** An SSH server with `hostKey` that lets any key in and runs nothing; counts its logins. */
  async function server(hostKey: string, port = 0): Promise<{ port: number; logins: () => number; close: () => Promise<void> }> {
    let logins = 0;
    const s = new Server({ hostKeys: [hostKey] }, (client) => {
      client.on('authentication', (ctx) => ctx.accept());
      client.on('ready', () => logins++);
      client.on('error', () => {});
    });
    await new Promise<void>((r) => s.listen(port, '127.0.0.1', r));
    return { port: (s.address() as net.AddressInfo).port, logins: () => logins, close: () => new Promise((r) => s.close(() => r())) };
  }
  const never = new Promise<never>(() => {});

  test('a server with another host key is refused before any login, naming both fingerprints; the wait for SSH ends at once when that is final', async () => {
    const guest = generateKeyPair('ryra-vm host key');
    const other = generateKeyPair();
    const key = generateKeyPair();
    const fp = (k: string) => {
      fs.writeFileSync(path.join(tmp, 'fp.pub'), k + '\n');
      return execFileSync('ssh-keygen', ['-l', '-f', path.join(tmp, 'fp.pub')], { encoding: 'utf8' }).split(' ')[1];
    };
    const right = await server(guest.privateKey);
    const wrong = await server(other.privateKey);
    try {
      const ok = await SshClient.connect({ port: right.port, user: 'ryra', privateKey: key.privateKey, hostKey: guest.publicKey });
      ok.end();
      assert.equal(right.logins(), 1);

      const err = await SshClient.connect({ port: wrong.port, user: 'ryra', privateKey: key.privateKey, hostKey: guest.publicKey }).catch((e: Error) => e);
      assert.ok(err instanceof SshHostKeyError, String(err));
      assert.equal(err.message, `refused 127.0.0.1:${wrong.port}: its SSH host key is ssh-ed25519 ${fp(other.publicKey)}, not the guest's ssh-ed25519 ${fp(guest.publicKey)}: it is not the VM this key was made for (a snapshot built before host keys were pinned, a guest whose host key was replaced, or another process on that port)`);
      assert.equal(wrong.logins(), 0, 'the key was never offered to it');

      // Final (restored, or cloud-init done): the wait ends at the first attempt, saying why.
      let asked = 0;
      const t0 = Date.now();
      const final = await waitForSsh({ port: wrong.port, user: 'ryra', privateKey: key.privateKey, hostKey: guest.publicKey }, { timeoutMs: 120_000, abort: never, retryMs: 10, refusalFinal: () => (++asked, 'the guest was restored from a snapshot that holds its key') }).catch((e: Error) => e);
      assert.ok(final instanceof SshHostKeyError, String(final));
      assert.equal(asked, 1);
      assert.ok(Date.now() - t0 < 10_000);
      assert.match(final.message, /, not the guest's ssh-ed25519 SHA256:\S+, and the guest was restored from a snapshot that holds its key: it is not the VM/);
      // Not final yet (cloud-init may still be writing the key): tried again until the bound.
      const later = await waitForSsh({ port: wrong.port, user: 'ryra', privateKey: key.privateKey, hostKey: guest.publicKey }, { timeoutMs: 2400, abort: never, retryMs: 10, refusalFinal: () => undefined }).catch((e: Error) => e);
      assert.ok(!(later instanceof SshHostKeyError));
      assert.match(String(later), /not ready after 2 s \(last error: refused 127\.0\.0\.1:\d+: its SSH host key is/);
      assert.equal(wrong.logins(), 0);
    } finally {
      await right.close();
      await wrong.close();
    }
  });
});

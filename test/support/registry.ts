// A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution registry 2.8) on a
// loopback port, filesystem storage in a temp dir, logging every request. Optionally with
// `auth: token` and a token server of the tests' own that issues the JWTs the registry checks
// (RS256, signed by a self-signed certificate made here with openssl, sent in the x5c header).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

/** Why the registry tests cannot run here, or undefined when they can. */
export function registryMissing(): string | undefined {
  if (!fs.existsSync(REGISTRY_BIN)) return `${REGISTRY_BIN} is not installed (apt-get install docker-registry; scripts/setup.sh installs it)`;
  for (const b of ['openssl', 'zstd']) {
    try {
      execFileSync(b, ['version'], { stdio: 'ignore' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return `${b} is not installed`;
    }
  }
  return undefined;
}

/** A loopback port nothing listens on (just now). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

export interface TokenServer {
  url: string;
  /** Token requests seen: whether they carried the right password, and the scopes asked. */
  requests: { auth: 'good' | 'bad' | 'none'; scopes: string[] }[];
}

export interface TestRegistry {
  /** host:port */
  host: string;
  /** The storage root (blobs under docker/registry/v2/blobs/sha256/). */
  root: string;
  token?: TokenServer;
  /** The registry's `response completed` lines so far. */
  requests(): { method: string; uri: string; status: number }[];
  /** Blob uploads so far: POSTs and PUTs under /blobs/uploads/. */
  blobUploads(): number;
  /** The data file of a blob in the storage dir. */
  blobFile(digest: string): string;
  close(): Promise<void>;
}

export interface RegistryOptions {
  /** `auth: token` with a token server that grants pull and push to this password (any user name). */
  password?: string;
  /** The token server also grants pull to requests without credentials. */
  anonymousPull?: boolean;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

async function startTokenServer(dir: string, password: string, anonymousPull: boolean): Promise<{ server: http.Server; token: TokenServer; cert: string }> {
  const key = path.join(dir, 'token.key');
  const cert = path.join(dir, 'token.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=ryra-test-token'], { stdio: 'ignore' });
  const der = new crypto.X509Certificate(fs.readFileSync(cert)).raw;
  const privateKey = crypto.createPrivateKey(fs.readFileSync(key));
  const requests: TokenServer['requests'] = [];
  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const scopes = u.searchParams.getAll('scope');
    const m = /^Basic (.*)$/.exec(req.headers.authorization ?? '');
    const pass = m ? Buffer.from(m[1], 'base64').toString().replace(/^[^:]*:/, '') : undefined;
    const auth = pass === undefined ? 'none' : pass === password ? 'good' : 'bad';
    requests.push({ auth, scopes });
    if (auth === 'bad' || (auth === 'none' && !anonymousPull)) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}');
      return;
    }
    const access = scopes
      .map((s) => s.split(':'))
      .filter((p) => p.length === 3 && p[0] === 'repository')
      .map(([type, name, actions]) => ({ type, name, actions: actions.split(',').filter((a) => auth === 'good' || a === 'pull') }));
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', x5c: [der.toString('base64')] };
    const claims = { iss: 'ryra-test-issuer', sub: auth === 'good' ? 'ryra' : '', aud: u.searchParams.get('service'), exp: now + 300, nbf: now - 10, iat: now, jti: crypto.randomUUID(), access };
    const signing = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = crypto.sign('sha256', Buffer.from(signing), privateKey);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: `${signing}.${b64url(sig)}`, expires_in: 300 }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/token`;
  return { server, token: { url, requests }, cert };
}

/** Starts a registry; close() stops it (and the token server) and removes its storage. */
export async function startRegistry(opts: RegistryOptions = {}): Promise<TestRegistry> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ryra-test-registry-'));
  const root = path.join(dir, 'storage');
  let tokenServer: http.Server | undefined;
  let child: ChildProcess | undefined;
  const lines: string[] = [];
  const close = async () => {
    child?.kill('SIGKILL');
    if (child && child.exitCode === null && child.signalCode === null) await new Promise((r) => child!.once('exit', r));
    await new Promise((r) => (tokenServer ? tokenServer.close(r) : r(undefined)));
    tokenServer?.closeAllConnections();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    let token: TokenServer | undefined;
    let authYaml = '';
    if (opts.password !== undefined) {
      const t = await startTokenServer(dir, opts.password, !!opts.anonymousPull);
      tokenServer = t.server;
      token = t.token;
      authYaml = `auth:\n  token:\n    realm: ${t.token.url}\n    service: ryra-test-registry\n    issuer: ryra-test-issuer\n    rootcertbundle: ${t.cert}\n`;
    }
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const config = path.join(dir, 'config.yml');
    fs.writeFileSync(
      config,
      `version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: ${root}\n  delete:\n    enabled: true\nhttp:\n  addr: ${host}\n${authYaml}`,
    );
    child = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop() ?? '';
      lines.push(...parts);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    // Ready when /v2/ answers (401 with auth on).
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}): ${lines.slice(-10).join('\n')}`);
      const status = await new Promise<number>((resolve) => {
        const req = http.get(`http://${host}/v2/`, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', () => resolve(0));
      });
      if (status === 200 || status === 401) break;
      if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${host} within 20 s: ${lines.slice(-10).join('\n')}`);
      await sleep(100);
    }
    const requests = () =>
      lines
        .filter((l) => l.includes('response completed'))
        .map((l) => ({
          method: /http\.request\.method=(\S+)/.exec(l)?.[1] ?? '',
          uri: /http\.request\.uri="?([^"\s]*)/.exec(l)?.[1] ?? '',
          status: Number(/http\.response\.status=(\d+)/.exec(l)?.[1] ?? 0),
        }));
    return {
      host,
      root,
      token,
      requests,
      blobUploads: () => requests().filter((r) => (r.method === 'POST' || r.method === 'PUT' || r.method === 'PATCH') && r.uri.includes('/blobs/uploads/')).length,
      blobFile: (digest) => path.join(root, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data'),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

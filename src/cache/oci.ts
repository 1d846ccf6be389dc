// A small client for the OCI distribution API: what a layer push and pull need (blob HEAD, a
// monolithic streamed upload, blob GET, manifest GET/PUT/HEAD) and the auth GHCR, Harbor and
// distribution speak (Bearer tokens from the realm a 401 names, anonymous or with Basic credentials;
// plain Basic). Written by hand on node:http(s): the npm clients (@snyk/docker-registry-v2-client,
// docker-registry-client, @sigstore/oci) pull only, buffer blobs in memory or lack the token flow,
// and none gives the connect and stall bounds a tier that must never hold up a job needs.
// Requests go through the runner's proxy (http_proxy, https_proxy, no_proxy, in either case) as
// curl, which fetches the blobs, reads it: one decision for both.
import { spawn } from 'node:child_process';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tls from 'node:tls';
import { runnerProxy, type ProxySettings } from '../proxy.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

export interface RegistryRef {
  scheme: 'http' | 'https';
  /** host[:port] */
  host: string;
  /** The repository inside the registry: OWNER/ryra-vm-layers. */
  name: string;
}

/** The distribution spec's repository name grammar. */
const NAME_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;

export function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * `ghcr.io/OWNER/ryra-vm-layers` (optionally with https:// or, for loopback hosts only, http://).
 * Loopback hosts default to plain HTTP. The repository is lowercased, as image-tag tools do: OCI
 * names are lowercase, and `ghcr.io/${{ github.repository_owner }}/…` has the owner's capitals.
 * Throws a message naming what is wrong.
 */
export function parseRegistryRef(value: string): RegistryRef {
  const m = /^(?:(https?):\/\/)?([^/\s]+)\/([^\s]+?)\/?$/.exec(value.trim());
  if (!m) throw new Error('expected HOST/REPOSITORY, such as ghcr.io/OWNER/ryra-vm-layers');
  const [, scheme0, host0, given] = m;
  const name = given.toLowerCase();
  let url: URL;
  try {
    url = new URL(`http://${host0}`);
  } catch {
    throw new Error(`${host0} is not a host name`);
  }
  if (url.username || url.password || url.host !== host0.toLowerCase()) throw new Error(`${host0} is not a host name (no credentials in it: use registry-token)`);
  if (!NAME_RE.test(name)) throw new Error(`repository ${given}: letters and digits (taken in lowercase), separated by . _ or -, parts joined by /`);
  const loop = isLoopback(url.hostname);
  const scheme = (scheme0 as 'http' | 'https' | undefined) ?? (loop ? 'http' : 'https');
  if (scheme === 'http' && !loop) throw new Error('plain http is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost); use https');
  return { scheme, host: url.host, name };
}

/**
 * 'unreachable': refused, reset, no connection or no bytes within the bounds; 'auth': the registry or
 * its token service refused the credentials. Either turns a tier off for the run. 'protocol':
 * anything else (an unexpected status, a bad digest).
 */
export type RegistryErrorKind = 'unreachable' | 'auth' | 'protocol';

export class RegistryError extends Error {
  override name = 'RegistryError';
  constructor(
    message: string,
    readonly kind: RegistryErrorKind,
  ) {
    super(message);
  }
}

export interface OciClientOptions {
  /** A token (the password of Basic credentials; GHCR takes GITHUB_TOKEN), or USER:PASSWORD. */
  token?: string;
  /** Bound on a TCP connect. */
  connectTimeoutMs?: number;
  /** Bound on a silence: no byte sent or received on a request's socket. */
  stallMs?: number;
  /** Sockets per host (the transfers' concurrency plus a few). */
  maxSockets?: number;
  /** The proxy (default: the runner's, from http_proxy, https_proxy and no_proxy, in either case). */
  proxy?: ProxySettings;
}

const unbracket = (host: string) => host.replace(/^\[|\]$/g, '');

/**
 * Whether `no_proxy` exempts `hostname`, as curl reads it (so node:http and curl agree): `*` alone
 * is every host; else a list, split on commas and spaces, of host names (a name also covers the
 * names under it; a leading dot is ignored), IP addresses and CIDR ranges. Loopback hosts are not
 * exempt by themselves (curl's rule; the toolkit's client always exempts them): name them.
 */
export function noProxy(hostname: string, list: string | undefined): boolean {
  const host = unbracket(hostname).toLowerCase().replace(/\.$/, '');
  const value = (list ?? '').trim();
  if (value === '*') return true;
  const ipType = net.isIP(host);
  for (const raw of value.split(/[\s,]+/)) {
    const token = raw.toLowerCase().replace(/^\./, '').replace(/^\[|\](?=\/|$)/g, '');
    if (!token) continue;
    if (ipType) {
      const [ip, bits] = token.split('/');
      if (bits === undefined ? ip === host : net.isIP(ip) === ipType && /^\d+$/.test(bits) && cidrHas(ip, Number(bits), host, ipType)) return true;
    } else if (host === token || host.endsWith(`.${token}`)) return true;
  }
  return false;
}

function cidrHas(ip: string, bits: number, host: string, type: number): boolean {
  const family = type === 4 ? 'ipv4' : 'ipv6';
  if (bits > (type === 4 ? 32 : 128)) return false;
  const list = new net.BlockList();
  list.addSubnet(ip, bits, family);
  return list.check(host, family);
}

/**
 * The proxy a request to `url` goes through, or undefined: https_proxy for https, http_proxy for
 * http, none for a host `no_proxy` names. A proxy that is not http(s) (curl takes socks, Node does
 * not) is an 'unreachable' error: the tier goes off with one warning naming it.
 */
export function proxyFor(url: URL, p: ProxySettings | undefined): URL | undefined {
  const value = url.protocol === 'https:' ? p?.https : p?.http;
  if (!value || noProxy(url.hostname, p?.no)) return undefined;
  let proxy: URL;
  try {
    proxy = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`);
  } catch {
    throw new RegistryError(`the proxy ${value} (${url.protocol === 'https:' ? 'https_proxy' : 'http_proxy'}) is not a URL`, 'unreachable');
  }
  if (proxy.protocol !== 'http:' && proxy.protocol !== 'https:') throw new RegistryError(`the proxy ${proxy.protocol}//${proxy.host} is not an http or https proxy, which the registry client needs`, 'unreachable');
  return proxy;
}

/** The Proxy-Authorization header a proxy URL's user and password make, if it has them. */
function proxyAuthorization(proxy: URL): string | undefined {
  if (!proxy.username && !proxy.password) return undefined;
  return `Basic ${Buffer.from(`${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`).toString('base64')}`;
}

const proxyPort = (proxy: URL) => Number(proxy.port) || (proxy.protocol === 'https:' ? 443 : 80);

/**
 * An https agent whose sockets are CONNECT tunnels through an http(s) proxy, TLS to the server
 * inside them (what curl and the toolkit's client do for https through a proxy). The tunnel must be
 * up within `connectMs`, the bound a direct connection has: https-proxy-agent has no bound on it,
 * and its socket arrives connected, past the request's own connect bound.
 */
export class TunnelAgent extends https.Agent {
  constructor(
    private readonly proxy: URL,
    private readonly connectMs: number,
    opts: https.AgentOptions = {},
  ) {
    super(opts);
  }

  // Node's Agent takes the socket from the callback when createConnection returns nothing.
  override createConnection(options: https.RequestOptions, cb?: (err: Error | null, socket: Duplex) => void): undefined {
    const host = options.host ?? 'localhost';
    const target = `${net.isIPv6(host) ? `[${host}]` : host}:${options.port ?? 443}`;
    const proxyHost = unbracket(this.proxy.hostname);
    const viaTls = this.proxy.protocol === 'https:';
    const raw = viaTls
      ? tls.connect({ host: proxyHost, port: proxyPort(this.proxy), servername: net.isIP(proxyHost) ? undefined : proxyHost, ALPNProtocols: ['http/1.1'] })
      : net.connect({ host: proxyHost, port: proxyPort(this.proxy) });
    let done = false;
    const finish = (err: Error | null, socket?: Duplex) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      raw.off('readable', read);
      if (err) raw.destroy();
      cb?.(err, socket!);
    };
    const timer = setTimeout(() => finish(new RegistryError(`no tunnel through the proxy ${this.proxy.host} to ${target} within ${this.connectMs / 1000} s`, 'unreachable')), this.connectMs);
    raw.on('error', (err) => finish(asRegistryError(err) as Error));
    raw.once('end', () => finish(new RegistryError(`the proxy ${this.proxy.host} closed the connection before it answered CONNECT ${target}`, 'unreachable')));
    const auth = proxyAuthorization(this.proxy);
    raw.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${auth ? `Proxy-Authorization: ${auth}\r\n` : ''}\r\n`);
    // The answer is read without putting the socket in flowing mode: TLS takes it over after.
    let head = Buffer.alloc(0);
    const read = () => {
      for (let b = raw.read() as Buffer | null; b; b = raw.read() as Buffer | null) {
        head = Buffer.concat([head, b]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > 64 << 10) finish(new RegistryError(`the proxy ${this.proxy.host} answered CONNECT ${target} with over 64 KiB of headers`, 'unreachable'));
          continue;
        }
        const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
        if (!/^HTTP\/1\.[01] 200(?: |$)/.test(status)) {
          const kind = / 407 /.test(status) ? 'auth' : 'unreachable';
          return finish(new RegistryError(`the proxy ${this.proxy.host} refused CONNECT ${target}: ${status.slice(0, 200)}${kind === 'auth' ? ' (check the credentials in the proxy URL)' : ''}`, kind));
        }
        if (end + 4 < head.length) raw.unshift(head.subarray(end + 4));
        return finish(null, tls.connect({ ...(options as tls.ConnectionOptions), socket: raw }));
      }
    };
    raw.on('readable', read);
    return undefined;
  }
}

export type Scope = 'pull' | 'pull,push';

/** A response, and the bound it broke if its socket was cut by one (the stream then only says "aborted"). */
export interface Response {
  res: http.IncomingMessage;
  why(): RegistryError | undefined;
}

/** curl's exit codes for a connection that failed or was cut (no host, no connection, a short body, a bound, TLS, an empty reply, send, receive). */
const CURL_NET = new Set([5, 6, 7, 18, 28, 35, 52, 55, 56]);

const NET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);

/** A stream or request error in terms of the registry: a cut connection is 'unreachable'. */
export function asRegistryError(err: unknown, r?: Pick<Response, 'why'>): unknown {
  const bound = r?.why();
  if (bound) return bound;
  if (err instanceof RegistryError || (err as Error)?.name === 'AbortError') return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if ((code && NET_CODES.has(code)) || (err as Error)?.message === 'aborted') return new RegistryError(`connection lost: ${(err as Error).message}`, 'unreachable');
  return err;
}

async function readBody(res: http.IncomingMessage, max: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) {
      res.destroy();
      throw new RegistryError(`a response body over ${max} bytes`, 'protocol');
    }
    parts.push(c);
  }
  return Buffer.concat(parts);
}

function drain(res: http.IncomingMessage): void {
  res.resume();
  res.on('error', () => {});
}

/** `Bearer realm="...",service="...",scope="..."` → scheme and params. */
export function parseChallenge(header: string | undefined): { scheme: string; params: Record<string, string> } | undefined {
  const m = /^\s*(\w+)\s*(.*)$/.exec(header ?? '');
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2].matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]*))/g)) params[p[1].toLowerCase()] = p[2] ?? p[3];
  return { scheme: m[1].toLowerCase(), params };
}

export class OciClient {
  readonly ref: RegistryRef;
  private readonly base: string;
  private readonly connectMs: number;
  private readonly stallMs: number;
  private readonly agent: http.Agent;
  /** For redirects to blob storage on other hosts (always https there); closed with the client. */
  private readonly otherAgent: https.Agent;
  private readonly user: string;
  private readonly password: string | undefined;
  /** The Authorization header that worked, per scope asked for. */
  private readonly auth = new Map<Scope, string>();
  private readonly proxy: ProxySettings | undefined;
  private readonly agentOpts: http.AgentOptions;
  /** Agents through a proxy, per proxy and kind (forwarding http, tunnelling https). */
  private readonly proxyAgents = new Map<string, http.Agent>();

  constructor(ref: RegistryRef | string, opts: OciClientOptions = {}) {
    this.ref = typeof ref === 'string' ? parseRegistryRef(ref) : ref;
    this.base = `${this.ref.scheme}://${this.ref.host}`;
    this.connectMs = opts.connectTimeoutMs ?? 10_000;
    this.stallMs = opts.stallMs ?? 30_000;
    const agentOpts = { keepAlive: true, maxSockets: opts.maxSockets ?? 8 };
    this.agent = this.ref.scheme === 'https' ? new https.Agent(agentOpts) : new http.Agent(agentOpts);
    this.otherAgent = new https.Agent(agentOpts);
    this.agentOpts = agentOpts;
    this.proxy = opts.proxy ?? runnerProxy();
    const t = opts.token?.trim() || undefined;
    // USER:PASSWORD for registries that check the user name (htpasswd); a bare token goes with any name.
    const colon = t ? t.indexOf(':') : -1;
    this.user = t && colon > 0 ? t.slice(0, colon) : 'ryra-vm';
    this.password = t && colon > 0 ? t.slice(colon + 1) : t;
  }

  private proxyAgent(proxy: URL, kind: 'forward' | 'tunnel', make: () => http.Agent): http.Agent {
    const key = `${kind} ${proxy.href}`;
    let agent = this.proxyAgents.get(key);
    if (!agent) this.proxyAgents.set(key, (agent = make()));
    return agent;
  }

  /** curl's environment: the same proxy settings as node:http's, in the lowercase names curl reads (it ignores HTTP_PROXY). */
  private curlEnv(): NodeJS.ProcessEnv {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(?:all|https?|no|ftp|socks\d?)_proxy$/i.test(k)));
    const p = this.proxy;
    return { ...env, ...(p?.http ? { http_proxy: p.http } : {}), ...(p?.https ? { https_proxy: p.https } : {}), ...(p?.no ? { no_proxy: p.no } : {}) };
  }

  close(): void {
    this.agent.destroy();
    this.otherAgent.destroy();
    for (const a of this.proxyAgents.values()) a.destroy();
  }

  private url(p: string): URL {
    return new URL(`${this.base}/v2/${this.ref.name}/${p}`);
  }

  /** One HTTP exchange under the connect and stall bounds; resolves at the response head. */
  private exchange(method: string, url: URL, headers: http.OutgoingHttpHeaders, body: Buffer | (() => Readable) | undefined, signal: AbortSignal): Promise<Response> {
    if (url.protocol !== 'https:' && !isLoopback(url.hostname)) {
      return Promise.reject(new RegistryError(`refusing plain http to ${url.host} (only loopback hosts may use it)`, 'protocol'));
    }
    return new Promise((resolve, reject) => {
      let bound: RegistryError | undefined;
      let proxy: URL | undefined;
      try {
        proxy = proxyFor(url, this.proxy);
      } catch (err) {
        return reject(err);
      }
      let req: http.ClientRequest;
      if (!proxy) {
        const mod = url.protocol === 'https:' ? https : http;
        const agent = url.host === this.ref.host ? this.agent : url.protocol === 'https:' ? this.otherAgent : undefined;
        req = mod.request(url, { method, headers, agent, signal });
      } else if (url.protocol === 'http:') {
        // Plain http through a proxy: the request goes to the proxy, with the absolute URI.
        const auth = proxyAuthorization(proxy);
        const agent = this.proxyAgent(proxy, 'forward', () => (proxy!.protocol === 'https:' ? new https.Agent(this.agentOpts) : new http.Agent(this.agentOpts)));
        req = (proxy.protocol === 'https:' ? https : http).request({
          protocol: proxy.protocol,
          host: unbracket(proxy.hostname),
          port: proxyPort(proxy),
          path: url.href,
          method,
          headers: { ...headers, host: url.host, ...(auth ? { 'proxy-authorization': auth } : {}) },
          agent,
          signal,
        });
      } else {
        // https through a proxy: a CONNECT tunnel, TLS to the server inside it.
        req = https.request(url, { method, headers, agent: this.proxyAgent(proxy, 'tunnel', () => new TunnelAgent(proxy!, this.connectMs, this.agentOpts)), signal });
      }
      let connectTimer: NodeJS.Timeout | undefined;
      req.on('socket', (s) => {
        if (!s.connecting) return;
        connectTimer = setTimeout(() => {
          bound = new RegistryError(`no connection to ${proxy ? `the proxy ${proxy.host} (for ${url.host})` : url.host} within ${this.connectMs / 1000} s`, 'unreachable');
          req.destroy(bound);
        }, this.connectMs);
        s.once('connect', () => clearTimeout(connectTimer));
      });
      req.setTimeout(this.stallMs, () => {
        bound = new RegistryError(`${url.host} stalled: nothing sent or received for ${this.stallMs / 1000} s (${method} ${url.pathname})`, 'unreachable');
        req.destroy(bound);
      });
      const why = () => bound;
      req.on('error', (err) => {
        clearTimeout(connectTimer);
        const e = asRegistryError(err, { why });
        // Say which hop failed: the proxy's address is not the registry's.
        if (proxy && !bound && e instanceof RegistryError) e.message += ` (through the proxy ${proxy.host})`;
        reject(e);
      });
      req.on('response', (res) => {
        clearTimeout(connectTimer);
        resolve({ res, why });
      });
      if (body === undefined || Buffer.isBuffer(body)) req.end(body);
      else pipeline(body(), req).catch((err) => req.destroy(err));
    });
  }

  /**
   * A request to the registry with its auth: on a 401 it authenticates as the challenge says and
   * tries once more; GET and HEAD follow redirects (blob storage), without credentials to another host.
   */
  async request(
    method: string,
    url: URL,
    o: { scope: Scope; signal: AbortSignal; headers?: http.OutgoingHttpHeaders; body?: Buffer | (() => Readable) },
  ): Promise<Response> {
    let target = url;
    for (let attempt = 0, hops = 0; ; ) {
      const sameHost = target.host === this.ref.host;
      const authHeader = sameHost ? this.auth.get(o.scope) : undefined;
      const headers = { 'user-agent': 'ryra-vm', ...o.headers, ...(authHeader ? { authorization: authHeader } : {}) };
      const r = await this.exchange(method, target, headers, o.body, o.signal);
      const status = r.res.statusCode ?? 0;
      if (status === 401 && sameHost && attempt === 0) {
        drain(r.res);
        attempt++;
        await this.authenticate(r.res.headers['www-authenticate'], o.scope, o.signal);
        continue;
      }
      if ((status === 401 || status === 403) && sameHost) {
        const text = (await readBody(r.res, 64 << 10).catch(() => Buffer.alloc(0))).toString().slice(0, 300);
        throw new RegistryError(
          `${this.ref.host} refused ${method} ${target.pathname} with HTTP ${status}${text ? `: ${text.trim()}` : ''} (check registry-token: it needs ${o.scope === 'pull' ? 'read' : 'write'} access to ${this.ref.name})`,
          'auth',
        );
      }
      if ([301, 302, 303, 307, 308].includes(status) && (method === 'GET' || method === 'HEAD') && r.res.headers.location && hops < 5) {
        drain(r.res);
        hops++;
        target = new URL(r.res.headers.location, target);
        continue;
      }
      return r;
    }
  }

  /** Gets a token (or sets Basic credentials) for `scope` as the registry's challenge says. */
  private async authenticate(header: string | undefined, scope: Scope, signal: AbortSignal): Promise<void> {
    const c = parseChallenge(header);
    const basic = this.password !== undefined ? `Basic ${Buffer.from(`${this.user}:${this.password}`).toString('base64')}` : undefined;
    if (c?.scheme === 'basic') {
      if (!basic) throw new RegistryError(`${this.ref.host} asks for credentials (Basic) and none were given: set registry-token`, 'auth');
      this.auth.set(scope, basic);
      return;
    }
    if (c?.scheme !== 'bearer' || !c.params.realm) throw new RegistryError(`${this.ref.host} answered 401 without a usable challenge (${header ?? 'none'})`, 'auth');
    let realm: URL;
    try {
      realm = new URL(c.params.realm);
    } catch {
      throw new RegistryError(`${this.ref.host} names a token realm that is not a URL: ${c.params.realm}`, 'auth');
    }
    if (c.params.service) realm.searchParams.set('service', c.params.service);
    const scopes = new Set([`repository:${this.ref.name}:${scope}`]);
    if (c.params.scope) for (const s of c.params.scope.split(' ')) if (s && !s.startsWith(`repository:${this.ref.name}:`)) scopes.add(s);
    for (const s of scopes) realm.searchParams.append('scope', s);
    // Credentials go to a realm only over https (or loopback); without them the token is anonymous.
    const r = await this.exchange('GET', realm, { 'user-agent': 'ryra-vm', ...(basic ? { authorization: basic } : {}) }, undefined, signal);
    const status = r.res.statusCode ?? 0;
    let body: Buffer;
    try {
      body = await readBody(r.res, 1 << 20);
    } catch (err) {
      throw asRegistryError(err, r);
    }
    if (status === 401 || status === 403) throw new RegistryError(`the token service ${realm.host} refused the ${basic ? 'credentials' : 'anonymous request'} (HTTP ${status}): check registry-token`, 'auth');
    if (status !== 200) throw new RegistryError(`the token service ${realm.host} answered HTTP ${status}`, 'auth');
    let token: unknown;
    try {
      const j = JSON.parse(body.toString()) as { token?: string; access_token?: string };
      token = j.token ?? j.access_token;
    } catch {
      /* checked below */
    }
    if (typeof token !== 'string' || !token) throw new RegistryError(`the token service ${realm.host} sent no token`, 'auth');
    this.auth.set(scope, `Bearer ${token}`);
  }

  /** Throws a RegistryError naming what was asked and what came back. */
  private async unexpected(r: Response, what: string): Promise<never> {
    const text = (await readBody(r.res, 64 << 10).catch(() => Buffer.alloc(0))).toString().trim().slice(0, 300);
    throw new RegistryError(`${what}: HTTP ${r.res.statusCode}${text ? ` ${text}` : ''}`, 'protocol');
  }

  private async exists(kind: 'blobs' | 'manifests', ref: string, scope: Scope, signal: AbortSignal): Promise<boolean> {
    const r = await this.request('HEAD', this.url(`${kind}/${ref}`), { scope, signal, headers: kind === 'manifests' ? { accept: OCI_MANIFEST } : {} });
    drain(r.res);
    if (r.res.statusCode === 200) return true;
    if (r.res.statusCode === 404) return false;
    return this.unexpected(r, `HEAD ${kind}/${ref}`);
  }

  blobExists(digest: string, signal: AbortSignal, scope: Scope = 'pull'): Promise<boolean> {
    return this.exists('blobs', digest, scope, signal);
  }

  manifestExists(tag: string, signal: AbortSignal, scope: Scope = 'pull'): Promise<boolean> {
    return this.exists('manifests', tag, scope, signal);
  }

  /** The manifest's bytes, or undefined when the tag does not exist. */
  async getManifest(tag: string, signal: AbortSignal): Promise<Buffer | undefined> {
    const r = await this.request('GET', this.url(`manifests/${tag}`), { scope: 'pull', signal, headers: { accept: OCI_MANIFEST } });
    if (r.res.statusCode === 404) {
      drain(r.res);
      return undefined;
    }
    if (r.res.statusCode !== 200) return this.unexpected(r, `GET manifests/${tag}`);
    try {
      return await readBody(r.res, 4 << 20);
    } catch (err) {
      throw asRegistryError(err, r);
    }
  }

  async putManifest(tag: string, body: Buffer, signal: AbortSignal): Promise<void> {
    const r = await this.request('PUT', this.url(`manifests/${tag}`), {
      scope: 'pull,push',
      signal,
      headers: { 'content-type': OCI_MANIFEST, 'content-length': body.length },
      body,
    });
    if (r.res.statusCode !== 201) return this.unexpected(r, `PUT manifests/${tag}`);
    drain(r.res);
  }

  /** A monolithic upload (POST, then one PUT with the whole body streamed); `body` may be called again on a retry. */
  async pushBlob(digest: string, size: number, body: () => Readable, signal: AbortSignal): Promise<void> {
    const start = await this.request('POST', this.url('blobs/uploads/'), { scope: 'pull,push', signal, headers: { 'content-length': 0 } });
    if (start.res.statusCode !== 202 || !start.res.headers.location) return this.unexpected(start, 'POST blobs/uploads/');
    drain(start.res);
    const loc = new URL(start.res.headers.location, this.base);
    loc.searchParams.set('digest', digest);
    const r = await this.request('PUT', loc, {
      scope: 'pull,push',
      signal,
      headers: { 'content-type': 'application/octet-stream', 'content-length': size },
      body,
    });
    if (r.res.statusCode !== 201) return this.unexpected(r, `PUT blob ${digest}`);
    drain(r.res);
  }

  /**
   * GETs a blob with curl, its body straight into the file descriptor `out`; settles when curl
   * has exited. Blob bodies go through curl, not
   * node:http: Node's receive, hash and write share one thread (~200 MB/s here) where curl reads at
   * ~500 MB/s on its own core and leaves Node only the hashing. The auth is the one this client
   * already holds for 'pull' (a manifest GET comes first and got it); it goes to curl on stdin, not
   * in its argv, and curl sends it to the registry's host only, never on a redirect to another
   * host. The same bounds hold: the connect bound, and a stall is less than 1 byte/s for the stall
   * bound (rounded to whole seconds). The caller checks the digest.
   */
  curlBlob(digest: string, out: number, signal: AbortSignal): Promise<void> {
    const url = this.url(`blobs/${digest}`);
    const auth = this.auth.get('pull');
    const q = (v: string) => `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
    const config = [`url = ${q(url.href)}`, 'header = "User-Agent: ryra-vm"', ...(auth ? [`header = ${q(`Authorization: ${auth}`)}`] : [])].join('\n') + '\n';
    const stallS = Math.max(1, Math.round(this.stallMs / 1000));
    // -q first: no ~/.curlrc. Redirects (blob storage) only to https; the proxy through curlEnv.
    const args = ['-q', '--config', '-', '--silent', '--show-error', '--fail', '--location', '--max-redirs', '5', '--proto', this.ref.scheme === 'https' ? '=https' : '=http,https', '--proto-redir', '=https'];
    args.push('--connect-timeout', String(this.connectMs / 1000), '--speed-limit', '1', '--speed-time', String(stallS));
    const child = spawn('curl', args, { stdio: ['pipe', out, 'pipe'], signal, env: this.curlEnv() });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d).length > 4000 && (stderr = stderr.slice(-2000)));
    child.stdin!.on('error', () => {});
    child.stdin!.end(config);
    const what = `GET ${url.pathname}`;
    return new Promise<void>((resolve, reject) => {
      child.on('error', (err) => reject((err as NodeJS.ErrnoException).code === 'ENOENT' ? new RegistryError('curl is not installed (it fetches blobs): install curl', 'protocol') : err));
      child.on('close', (code, sig) => {
        if (code === 0) return resolve();
        if (signal.aborted) return reject(signal.reason);
        const msg = stderr.trim().split('\n').pop()?.slice(0, 300) ?? '';
        const status = Number(/returned error: (\d{3})/.exec(msg)?.[1] ?? 0);
        if (code === 22 && (status === 401 || status === 403)) {
          // A token that expired mid-run: the next manifest GET (a retry) fetches a new one.
          this.auth.delete('pull');
          return reject(new RegistryError(`${this.ref.host} refused ${what} with HTTP ${status}`, 'protocol'));
        }
        if (code === 22) return reject(new RegistryError(`GET blob ${digest}: HTTP ${status || '?'}`, 'protocol'));
        if (code === 28 && /too slow/i.test(msg)) return reject(new RegistryError(`${this.ref.host} stalled: nothing sent or received for ${stallS} s (${what})`, 'unreachable'));
        if (code === 28 && /connect/i.test(msg)) return reject(new RegistryError(`no connection to ${this.ref.host} within ${this.connectMs / 1000} s`, 'unreachable'));
        if (code !== null && CURL_NET.has(code)) return reject(new RegistryError(`connection lost: ${msg} (${what})`, 'unreachable'));
        reject(new RegistryError(`curl ${what} failed (${code ?? sig}): ${msg}`, 'protocol'));
      });
    });
  }
}

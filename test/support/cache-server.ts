// A local, protocol-faithful stand-in for the GitHub Actions cache service, for tests driven by the
// real `@actions/cache` client (the real service is unreachable from CI sandboxes and test machines).
//
// It speaks:
//   - cache service v2 (Twirp/JSON): POST /twirp/github.actions.results.api.v1.CacheService/<Method>
//   - cache service v1 (REST):       /_apis/artifactcache/{cache,caches,caches/<id>}
//   - the blob store behind the signed URLs, as `@azure/storage-blob` (upload) and
//     `@actions/http-client` / the Azure SDK (download) talk to Azure Storage:
//     /blob/cache/<blobId>?sv=…&se=…&sp=…&sig=…
//
// Wire details were taken from @actions/cache 6.3.0 `lib/` (generated Twirp messages, cacheHttpClient,
// cacheTwirpClient, uploadUtils, downloadUtils) and @azure/storage-blob 12.31 (operation specs).
// Everything is kept in memory except archive bytes, which go to a temp directory removed on close().

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

// ---------------------------------------------------------------------------------------------------
// Public types

export type CacheProtocol = 'v1' | 'v2';

/** One element of the runtime token's `ac` claim. Permission is a bit set: 1 = read, 2 = write. */
export interface ScopeGrant {
  Scope: string;
  Permission: number;
}

export const PERMISSION_READ = 1;
export const PERMISSION_WRITE = 2;

export const TWIRP_SERVICE = 'github.actions.results.api.v1.CacheService';

/** What a request was classified as (set before any fault is applied, usable in `match`). */
export type RequestOp =
  | 'twirp.CreateCacheEntry'
  | 'twirp.FinalizeCacheEntryUpload'
  | 'twirp.GetCacheEntryDownloadURL'
  | 'twirp.unknown'
  | 'v1.getCacheEntry'
  | 'v1.listCaches'
  | 'v1.reserveCache'
  | 'v1.uploadChunk'
  | 'v1.commitCache'
  | 'v1.unknown'
  | 'blob.putBlob'
  | 'blob.putBlock'
  | 'blob.putBlockList'
  | 'blob.get'
  | 'blob.head'
  | 'blob.unknown'
  | 'unknown';

export interface RecordedRequest {
  /** 1-based arrival order. */
  seq: number;
  /** Date.now() at arrival. */
  time: number;
  method: string;
  /** Path without the query string. */
  path: string;
  /** Path and query as received. */
  url: string;
  query: Record<string, string>;
  op: RequestOp;
  headers: http.IncomingHttpHeaders;
  /** Parsed JSON body, for Twirp and v1 JSON calls (read before faults are matched). */
  body?: unknown;
  /** Bytes of request body stored, for uploads. */
  bodyBytes?: number;
  /** Status code sent; undefined while unanswered (or forever, for a stall). */
  status?: number;
  /** Fault applied to this request, if any. */
  fault?: FaultKind;
}

export type FaultKind = '429' | '503' | 'stall' | 'truncate' | 'delay';

export interface FaultSpec {
  kind: FaultKind;
  /** Predicate on the request; the fault applies to the next requests it accepts. */
  match?: (req: RecordedRequest) => boolean;
  /** Shorthand filter on `RecordedRequest.op` (combined with `match` when both are given). */
  op?: RequestOp | RequestOp[];
  /** How many matching requests the fault applies to (default 1; Infinity allowed). */
  times?: number;
  /** '429' / '503': value of the Retry-After header, in seconds. */
  retryAfter?: number;
  /**
   * 'stall': if set, send the status line, headers (full Content-Length) and this many body bytes
   * (at most length − 1), then go silent. If unset, the request is read and never answered.
   */
  afterBytes?: number;
  /** 'truncate': body bytes sent before the connection is closed (default: half, at most length − 1). */
  bytes?: number;
  /**
   * 'truncate': send the body chunked (no Content-Length) and end it cleanly after `bytes`, so the
   * client cannot tell the body is short. Default false: full Content-Length, connection closed early.
   */
  chunked?: boolean;
  /** 'delay': milliseconds to wait before handling the request normally. */
  ms?: number;
}

export interface FaultHandle {
  /** How many requests this fault has been applied to. */
  readonly hits: number;
  /** How many more requests it will apply to. */
  readonly remaining: number;
  cancel(): void;
}

export interface CacheEntryInfo {
  id: number;
  key: string;
  version: string;
  scope: string;
  /** Archive size in bytes (0 while an upload is pending). */
  size: number;
  createdAt: Date;
  committed: boolean;
  /** Which API created it ('seed' for `CacheServer.seed`). */
  via: CacheProtocol | 'seed';
}

export interface CacheServerOptions {
  /** Scopes of the default runtime token. Default: [{Scope: 'refs/heads/main', Permission: 3}]. */
  scopes?: ScopeGrant[];
  /** Parent directory for archive storage (a fresh subdirectory is created). Default: os.tmpdir(). */
  dir?: string;
  /** Lifetime of signed blob URLs. Default: 1 hour. */
  signedUrlTtlMs?: number;
}

export interface CacheServer {
  /** Base URL, ending with '/'. */
  readonly url: string;
  /** The default runtime token (a JWT carrying `opts.scopes`). */
  readonly token: string;
  /** Every request received, in arrival order. Safe to clear with `requests.length = 0`. */
  readonly requests: RecordedRequest[];
  /** Directory holding blob files (removed on close). */
  readonly storageDir: string;
  /**
   * Environment variables that point the toolkit at this server. Variables that must be absent for
   * the chosen protocol are returned as '' (the toolkit treats empty as unset); apply with
   * `Object.assign(process.env, env)` or delete the empty ones.
   */
  env(protocol: CacheProtocol, opts?: { token?: string }): Record<string, string>;
  /** Mint a runtime token with other scopes (e.g. a PR run that may only read the default branch). */
  makeToken(scopes: ScopeGrant[], opts?: { expiresInSec?: number }): string;
  /** Where signed blob URLs point from now on (e.g. a TLS front, as github.com's are https); undefined: this server. */
  blobBase(url: string | undefined): void;
  /** Committed entries, newest first (pending reservations too with includePending). */
  entries(opts?: { includePending?: boolean }): CacheEntryInfo[];
  /** Store a committed entry directly, bypassing the protocol. */
  seed(entry: {
    key: string;
    version: string;
    scope?: string;
    data?: Buffer;
    file?: string;
    createdAt?: Date;
  }): Promise<CacheEntryInfo>;
  /** Replaces the archive of the committed entry `key` (every version): a hostile writer of the cache. */
  replace(key: string, data: Buffer): Promise<void>;
  /** Add a fault for the next matching requests (faults are consulted in injection order). */
  inject(fault: FaultSpec): FaultHandle;
  clearFaults(): void;
  /** Stop listening, destroy every open socket (stalled requests included), delete stored blobs. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Internal state

interface Blob {
  id: string;
  /**
   * Committed content, if any: its files in order (one for a single PUT, the listed blocks for a
   * block list: like Azure, a commit links the staged blocks and copies no byte).
   */
  parts?: Part[];
  size: number;
  etag: string;
  lastModified: Date;
  createdAt: Date;
  /** False once the owning cache entry is committed (entries are immutable). */
  writable: boolean;
  /** Staged, uncommitted blocks (Put Block), by block id. */
  blocks: Map<string, Part>;
  blockIdLength?: number;
}

interface Entry {
  id: number;
  seq: number;
  key: string;
  version: string;
  scope: string;
  blobId: string;
  size: number;
  createdAt: Date;
  committed: boolean;
  via: CacheProtocol | 'seed';
  /** v1 upload bookkeeping: received [start, end] (inclusive) chunks. */
  chunks?: Array<[number, number]>;
}

interface ActiveFault {
  spec: FaultSpec;
  remaining: number;
  hits: number;
}

interface Ctx {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  rec: RecordedRequest;
  fault?: FaultSpec;
}

interface TokenClaims {
  scopes: ScopeGrant[];
}

type Part = { file: string; size: number };
type PartsRange = { parts: Part[]; start: number; length: number };
type Body = Buffer | PartsRange | null;

const API_VERSION = '2025-11-05';
const MAX_JSON_BODY = 1024 * 1024;
const MAX_KEY_LENGTH = 512;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------------

export async function startCacheServer(opts: CacheServerOptions = {}): Promise<CacheServer> {
  const secret = crypto.randomBytes(32);
  const storageDir = await fsp.mkdtemp(path.join(opts.dir ?? os.tmpdir(), 'ryra-cache-server-'));
  const ttl = opts.signedUrlTtlMs ?? 60 * 60 * 1000;
  const requests: RecordedRequest[] = [];
  const entries: Entry[] = [];
  const blobs = new Map<string, Blob>();
  const faults: ActiveFault[] = [];
  const sockets = new Set<Socket>();
  let seq = 0;
  let entrySeq = 0;
  let fileSeq = 0;
  let closed = false;
  let baseUrl = '';
  let blobBaseUrl: string | undefined;

  // ---- tokens ------------------------------------------------------------------------------------

  const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');
  const hmac = (data: string) => crypto.createHmac('sha256', secret).update(data).digest();

  function makeToken(scopes: ScopeGrant[], o: { expiresInSec?: number } = {}): string {
    const now = Math.floor(Date.now() / 1000);
    const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'HS256' }));
    const payload = b64url(
      JSON.stringify({
        ac: JSON.stringify(scopes),
        iss: 'ryra-cache-server',
        aud: 'vso:ryra-cache-server',
        nbf: now - 60,
        iat: now,
        exp: now + (o.expiresInSec ?? 6 * 3600),
      }),
    );
    const sig = b64url(hmac(`${header}.${payload}`));
    return `${header}.${payload}.${sig}`;
  }

  function verifyToken(auth: string | undefined): TokenClaims {
    const m = /^Bearer\s+(\S+)$/i.exec(auth ?? '');
    if (!m) throw new HttpError(401, 'unauthenticated', 'missing bearer token');
    const parts = m[1].split('.');
    if (parts.length !== 3) throw new HttpError(401, 'unauthenticated', 'malformed token');
    const [h, p, s] = parts;
    const expected = hmac(`${h}.${p}`);
    const got = Buffer.from(s, 'base64url');
    if (got.length !== expected.length || !crypto.timingSafeEqual(got, expected)) {
      throw new HttpError(401, 'unauthenticated', 'bad token signature');
    }
    let payload: { ac?: unknown; exp?: unknown };
    try {
      payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
    } catch {
      throw new HttpError(401, 'unauthenticated', 'malformed token payload');
    }
    if (typeof payload.exp === 'number' && payload.exp * 1000 < Date.now()) {
      throw new HttpError(401, 'unauthenticated', 'token expired');
    }
    let scopes: ScopeGrant[] = [];
    if (typeof payload.ac === 'string' && payload.ac !== '') {
      try {
        const parsed = JSON.parse(payload.ac);
        if (Array.isArray(parsed)) {
          scopes = parsed.filter(
            (g): g is ScopeGrant => !!g && typeof g.Scope === 'string' && typeof g.Permission === 'number',
          );
        }
      } catch {
        throw new HttpError(401, 'unauthenticated', 'malformed ac claim');
      }
    }
    return { scopes };
  }

  const readableScopes = (c: TokenClaims) =>
    c.scopes.filter((g) => (g.Permission & PERMISSION_READ) !== 0).map((g) => g.Scope);
  const writableScope = (c: TokenClaims) =>
    c.scopes.find((g) => (g.Permission & PERMISSION_WRITE) !== 0)?.Scope;

  const defaultToken = makeToken(opts.scopes ?? [{ Scope: 'refs/heads/main', Permission: 3 }]);

  // ---- signed blob URLs --------------------------------------------------------------------------

  function signBlobUrl(blobId: string, perm: 'r' | 'cw'): string {
    const se = new Date(Date.now() + ttl).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const sv = API_VERSION;
    const sig = hmac(`blob\n${blobId}\n${perm}\n${se}\n${sv}`).toString('base64');
    const q = new URLSearchParams({ sv, se, sr: 'b', sp: perm, sig });
    return `${blobBaseUrl ?? baseUrl}blob/cache/${blobId}?${q.toString()}`;
  }

  function verifyBlobSig(blobId: string, q: URLSearchParams, need: 'r' | 'w'): void {
    const sig = q.get('sig');
    const sp = q.get('sp') ?? '';
    const se = q.get('se') ?? '';
    const sv = q.get('sv') ?? '';
    if (!sig) throw new HttpError(403, 'AuthenticationFailed', 'Missing signature');
    const expected = hmac(`blob\n${blobId}\n${sp}\n${se}\n${sv}`);
    const got = Buffer.from(sig, 'base64');
    if (got.length !== expected.length || !crypto.timingSafeEqual(got, expected)) {
      throw new HttpError(403, 'AuthenticationFailed', 'Signature did not match');
    }
    if (!(Date.parse(se) > Date.now())) throw new HttpError(403, 'AuthenticationFailed', 'Signed expiry time has passed');
    if (!sp.includes(need)) {
      throw new HttpError(403, 'AuthorizationPermissionMismatch', 'This request is not authorized to perform this operation using this permission.');
    }
  }

  // ---- entries & lookup --------------------------------------------------------------------------

  const sameKey = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
  const newestFirst = (a: Entry, b: Entry) => b.createdAt.getTime() - a.createdAt.getTime() || b.seq - a.seq;

  /** Scopes outermost (current branch first), then for each key: exact match, then prefix match. */
  function lookup(scopes: string[], keys: string[], version: string): Entry | undefined {
    for (const scope of scopes) {
      const candidates = entries
        .filter((e) => e.committed && e.scope === scope && e.version === version)
        .sort(newestFirst);
      for (const k of keys) {
        const lk = k.toLowerCase();
        const exact = candidates.find((e) => e.key.toLowerCase() === lk);
        if (exact) return exact;
        const prefix = candidates.find((e) => e.key.toLowerCase().startsWith(lk));
        if (prefix) return prefix;
      }
    }
    return undefined;
  }

  const findEntry = (scope: string, key: string, version: string) =>
    entries.find((e) => e.scope === scope && e.version === version && sameKey(e.key, key));

  function newBlob(): Blob {
    const now = new Date();
    const blob: Blob = {
      id: crypto.randomUUID(),
      size: 0,
      etag: newEtag(),
      lastModified: now,
      createdAt: now,
      writable: true,
      blocks: new Map(),
    };
    blobs.set(blob.id, blob);
    return blob;
  }

  function newEntry(scope: string, key: string, version: string, via: Entry['via']): Entry {
    const blob = newBlob();
    const e: Entry = {
      id: ++entrySeq,
      seq: entrySeq,
      key,
      version,
      scope,
      blobId: blob.id,
      size: 0,
      createdAt: new Date(),
      committed: false,
      via,
    };
    entries.push(e);
    return e;
  }

  function commitEntry(e: Entry, size: number): void {
    e.committed = true;
    e.size = size;
    e.createdAt = new Date();
    const blob = blobs.get(e.blobId);
    if (blob) blob.writable = false;
  }

  function validateKey(key: unknown, what = 'key'): string {
    if (typeof key !== 'string' || key === '') throw new HttpError(400, 'invalid_argument', `${what} is required`);
    if (key.length > MAX_KEY_LENGTH) throw new HttpError(400, 'invalid_argument', `${what} is longer than ${MAX_KEY_LENGTH} characters`);
    if (key.includes(',')) throw new HttpError(400, 'invalid_argument', `${what} cannot contain commas`);
    return key;
  }

  function validateVersion(v: unknown): string {
    if (typeof v !== 'string' || v === '') throw new HttpError(400, 'invalid_argument', 'version is required');
    return v;
  }

  const newEtag = () => `"0x8D${crypto.randomBytes(7).toString('hex').toUpperCase()}"`;
  const newFile = (tag: string) => path.join(storageDir, `${++fileSeq}.${tag}`);

  // ---- faults ------------------------------------------------------------------------------------

  function takeFault(rec: RecordedRequest): FaultSpec | undefined {
    for (const f of faults) {
      if (f.remaining <= 0) continue;
      const ops = f.spec.op === undefined ? undefined : Array.isArray(f.spec.op) ? f.spec.op : [f.spec.op];
      if (ops && !ops.includes(rec.op)) continue;
      if (f.spec.match && !f.spec.match(rec)) continue;
      f.remaining--;
      f.hits++;
      return f.spec;
    }
    return undefined;
  }

  // ---- response helpers --------------------------------------------------------------------------

  function commonHeaders(): Record<string, string> {
    return { Date: new Date().toUTCString() };
  }

  function azureHeaders(ctx: Ctx): Record<string, string> {
    const h: Record<string, string> = {
      ...commonHeaders(),
      'x-ms-request-id': crypto.randomUUID(),
      'x-ms-version': String(ctx.req.headers['x-ms-version'] ?? API_VERSION),
      Server: 'Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0',
    };
    const cid = ctx.req.headers['x-ms-client-request-id'];
    if (typeof cid === 'string') h['x-ms-client-request-id'] = cid;
    return h;
  }

  function bodyLength(body: Body): number {
    if (body === null) return 0;
    return Buffer.isBuffer(body) ? body.length : body.length;
  }

  async function writeBody(res: http.ServerResponse, body: Body, limit: number): Promise<void> {
    if (body === null || limit <= 0) return;
    if (Buffer.isBuffer(body)) {
      await new Promise<void>((resolve, reject) =>
        res.write(body.subarray(0, limit), (err) => (err ? reject(err) : resolve())),
      );
      return;
    }
    // rejects if the client goes away, so a handler never waits on a dead socket
    // 1 MiB reads: with the default 64 KiB the service sends ~300 MB/s here, slower than a client
    // such as curl reads, and a restore's time would be this test service's.
    const { parts, start } = body;
    const end = start + limit; // exclusive
    async function* bytes() {
      let at = 0; // offset of the part in the blob
      for (const part of parts) {
        const from = Math.max(start, at);
        const last = Math.min(end, at + part.size) - 1;
        if (from <= last) yield* fs.createReadStream(part.file, { start: from - at, end: last - at, highWaterMark: 1 << 20 });
        at += part.size;
      }
    }
    await pipeline(bytes, res, { end: false });
  }

  /** Send a response, honouring a 'truncate' or partial 'stall' fault attached to the request. */
  async function send(ctx: Ctx, status: number, headers: Record<string, string>, body: Body): Promise<void> {
    const { req, res, rec, fault } = ctx;
    if (res.headersSent || res.destroyed) return;
    rec.status = status;
    const len = bodyLength(body);
    const isHead = req.method === 'HEAD';
    const hasContentLength = Object.keys(headers).some((h) => h.toLowerCase() === 'content-length');
    const allHeaders = hasContentLength ? headers : { ...headers, 'Content-Length': String(len) };

    if (fault?.kind === 'truncate' && len > 0 && !isHead) {
      const n = Math.max(0, Math.min(fault.bytes ?? Math.floor(len / 2), len - 1));
      if (fault.chunked) {
        const h = Object.fromEntries(Object.entries(allHeaders).filter(([k]) => k.toLowerCase() !== 'content-length'));
        res.writeHead(status, h);
        await writeBody(res, body, n);
        res.end();
        return;
      }
      res.writeHead(status, allHeaders);
      res.flushHeaders();
      await writeBody(res, body, n);
      const sock = res.socket;
      if (sock) {
        sock.end(); // flush what was written, then FIN: the client sees fewer bytes than Content-Length
        setTimeout(() => sock.destroy(), 1000).unref();
      }
      return;
    }
    if (fault?.kind === 'stall' && fault.afterBytes !== undefined && !isHead) {
      res.writeHead(status, allHeaders);
      res.flushHeaders();
      await writeBody(res, body, Math.max(0, Math.min(fault.afterBytes, len - 1)));
      return; // never end: the socket is destroyed on close()
    }
    res.writeHead(status, allHeaders);
    if (!isHead) await writeBody(res, body, len);
    res.end();
  }

  const sendJson = (ctx: Ctx, status: number, obj: unknown, extra: Record<string, string> = {}) =>
    send(ctx, status, { ...commonHeaders(), 'Content-Type': 'application/json', ...extra }, Buffer.from(JSON.stringify(obj)));

  function sendError(ctx: Ctx, status: number, code: string, message: string, extra: Record<string, string> = {}) {
    const proto = ctx.rec.op.split('.')[0];
    if (proto === 'twirp') {
      return sendJson(ctx, status, { code, msg: message }, extra);
    }
    if (proto === 'blob') {
      const xml =
        `\uFEFF<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code>` +
        `<Message>${escapeXml(message)}\nRequestId:${crypto.randomUUID()}\nTime:${new Date().toISOString()}</Message></Error>`;
      return send(
        ctx,
        status,
        { ...azureHeaders(ctx), 'Content-Type': 'application/xml', 'x-ms-error-code': code, ...extra },
        Buffer.from(xml),
      );
    }
    // v1 (Azure DevOps style) error body; http-client surfaces `message`.
    return sendJson(
      ctx,
      status,
      { $id: '1', innerException: null, message, typeName: code, typeKey: code, errorCode: 0, eventId: 3000 },
      extra,
    );
  }

  // ---- request plumbing --------------------------------------------------------------------------

  function classify(method: string, pathname: string, q: URLSearchParams): RequestOp {
    if (pathname.startsWith(`/twirp/${TWIRP_SERVICE}/`)) {
      const m = pathname.slice(`/twirp/${TWIRP_SERVICE}/`.length);
      if (method === 'POST' && ['CreateCacheEntry', 'FinalizeCacheEntryUpload', 'GetCacheEntryDownloadURL'].includes(m)) {
        return `twirp.${m}` as RequestOp;
      }
      return 'twirp.unknown';
    }
    if (pathname.startsWith('/twirp/')) return 'twirp.unknown';
    if (pathname.startsWith('/_apis/artifactcache/')) {
      const r = pathname.slice('/_apis/artifactcache/'.length);
      if (r === 'cache' && method === 'GET') return 'v1.getCacheEntry';
      if (r === 'caches' && method === 'GET') return 'v1.listCaches';
      if (r === 'caches' && method === 'POST') return 'v1.reserveCache';
      if (/^caches\/\d+$/.test(r) && method === 'PATCH') return 'v1.uploadChunk';
      if (/^caches\/\d+$/.test(r) && method === 'POST') return 'v1.commitCache';
      return 'v1.unknown';
    }
    if (pathname.startsWith('/blob/')) {
      if (method === 'PUT') {
        const comp = q.get('comp');
        if (comp === null) return 'blob.putBlob';
        if (comp === 'block') return 'blob.putBlock';
        if (comp === 'blocklist') return 'blob.putBlockList';
        return 'blob.unknown';
      }
      if (method === 'GET') return 'blob.get';
      if (method === 'HEAD') return 'blob.head';
      return 'blob.unknown';
    }
    return 'unknown';
  }

  const isJsonOp = (op: RequestOp) =>
    op.startsWith('twirp.') || op === 'v1.reserveCache' || op === 'v1.commitCache';

  async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const c of req) {
      total += (c as Buffer).length;
      if (total > limit) throw new HttpError(413, 'RequestBodyTooLarge', 'request body too large');
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks);
  }

  function drain(req: http.IncomingMessage): Promise<void> {
    return new Promise((resolve) => {
      if (req.readableEnded) return resolve();
      req.on('end', resolve).on('error', () => resolve()).on('close', resolve);
      req.resume();
    });
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const u = new URL(req.url ?? '/', 'http://localhost');
    const method = req.method ?? 'GET';
    const rec: RecordedRequest = {
      seq: ++seq,
      time: Date.now(),
      method,
      path: u.pathname,
      url: req.url ?? '/',
      query: Object.fromEntries(u.searchParams),
      op: classify(method, u.pathname, u.searchParams),
      headers: req.headers,
    };
    requests.push(rec);
    const ctx: Ctx = { req, res, rec };

    let jsonBody: unknown;
    let jsonError: HttpError | undefined;
    if (isJsonOp(rec.op)) {
      try {
        const raw = await readBody(req, MAX_JSON_BODY);
        jsonBody = raw.length ? JSON.parse(raw.toString('utf8')) : {};
        rec.body = jsonBody;
      } catch (e) {
        jsonError = e instanceof HttpError ? e : new HttpError(400, 'malformed', 'request body is not valid JSON');
      }
    }

    const fault = takeFault(rec);
    if (fault) {
      rec.fault = fault.kind;
      ctx.fault = fault;
      switch (fault.kind) {
        case '429':
        case '503': {
          await drain(req);
          const status = fault.kind === '429' ? 429 : 503;
          const extra: Record<string, string> = fault.retryAfter !== undefined ? { 'Retry-After': String(fault.retryAfter) } : {};
          const proto = rec.op.split('.')[0];
          const code =
            proto === 'twirp'
              ? status === 429 ? 'resource_exhausted' : 'unavailable'
              : proto === 'blob'
                ? status === 429 ? 'TooManyRequests' : 'ServerBusy'
                : status === 429 ? 'TooManyRequests' : 'ServiceUnavailable';
          const msg = status === 429 ? 'injected fault: rate limited' : 'injected fault: service unavailable';
          ctx.fault = undefined;
          await sendError(ctx, status, code, msg, extra);
          return;
        }
        case 'stall':
          if (fault.afterBytes === undefined) {
            await drain(req);
            return; // never answered; close() destroys the socket
          }
          break;
        case 'delay':
          await new Promise((r) => setTimeout(r, fault.ms ?? 1000));
          if (closed) return;
          break;
        case 'truncate':
          break;
      }
    }

    try {
      if (jsonError) throw jsonError;
      const proto = rec.op.split('.')[0];
      if (proto === 'twirp') await handleTwirp(ctx, jsonBody);
      else if (proto === 'v1') await handleV1(ctx, u, jsonBody);
      else if (proto === 'blob') await handleBlob(ctx, u);
      else throw new HttpError(404, 'NotFound', `no route for ${method} ${u.pathname}`);
    } catch (e) {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      if (!req.readableEnded) await drain(req);
      if (e instanceof HttpError) {
        await sendError(ctx, e.status, e.code, e.message);
      } else {
        await sendError(ctx, 500, rec.op.startsWith('twirp') ? 'internal' : 'InternalError', String((e as Error)?.message ?? e));
      }
    }
  }

  // ---- v2 Twirp ----------------------------------------------------------------------------------

  async function handleTwirp(ctx: Ctx, body: unknown): Promise<void> {
    const { rec, req } = ctx;
    if (rec.op === 'twirp.unknown') {
      throw new HttpError(404, 'bad_route', `no handler for path "${rec.path}"`);
    }
    const ct = String(req.headers['content-type'] ?? '');
    if (!ct.startsWith('application/json')) {
      throw new HttpError(404, 'bad_route', `unexpected Content-Type: "${ct}" (only application/json is served)`);
    }
    const claims = verifyToken(req.headers.authorization);
    const b = (body ?? {}) as Record<string, unknown>;

    switch (rec.op) {
      case 'twirp.CreateCacheEntry': {
        const key = validateKey(b.key);
        const version = validateVersion(b.version);
        const scope = writableScope(claims);
        if (!scope) {
          await sendJson(ctx, 200, { ok: false, message: 'cache write denied: the runtime token has no writable cache scope' });
          return;
        }
        if (findEntry(scope, key, version)) {
          throw new HttpError(409, 'already_exists', `cache entry with key "${key}" and version "${version}" already exists in scope ${scope}`);
        }
        const e = newEntry(scope, key, version, 'v2');
        await sendJson(ctx, 200, { ok: true, signed_upload_url: signBlobUrl(e.blobId, 'cw') });
        return;
      }
      case 'twirp.FinalizeCacheEntryUpload': {
        const key = validateKey(b.key);
        const version = validateVersion(b.version);
        const sizeBytes = Number(b.size_bytes ?? 0);
        if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) throw new HttpError(400, 'invalid_argument', 'size_bytes is invalid');
        const scope = writableScope(claims);
        const e = scope ? findEntry(scope, key, version) : undefined;
        if (!e) throw new HttpError(404, 'not_found', `no cache entry reservation for key "${key}" and version "${version}"`);
        if (e.committed) throw new HttpError(409, 'already_exists', `cache entry with key "${key}" is already finalized`);
        const blob = blobs.get(e.blobId);
        if (!blob?.parts) {
          await sendJson(ctx, 200, { ok: false, message: `no uploaded archive found for cache entry "${key}"` });
          return;
        }
        if (blob.size !== sizeBytes) {
          await sendJson(ctx, 200, { ok: false, message: `size_bytes ${sizeBytes} does not match the uploaded archive size ${blob.size}` });
          return;
        }
        commitEntry(e, blob.size);
        await sendJson(ctx, 200, { ok: true, entry_id: String(e.id) });
        return;
      }
      case 'twirp.GetCacheEntryDownloadURL': {
        const key = validateKey(b.key);
        const restoreKeys = b.restore_keys === undefined ? [] : b.restore_keys;
        if (!Array.isArray(restoreKeys)) throw new HttpError(400, 'invalid_argument', 'restore_keys must be a list');
        restoreKeys.forEach((k) => validateKey(k, 'restore key'));
        if (restoreKeys.length + 1 > 10) throw new HttpError(400, 'invalid_argument', 'at most 10 keys');
        const version = validateVersion(b.version);
        const scopes = readableScopes(claims);
        if (scopes.length === 0) {
          throw new HttpError(403, 'permission_denied', 'cache read denied: the runtime token has no readable cache scope');
        }
        const e = lookup(scopes, [key, ...(restoreKeys as string[])], version);
        if (!e) {
          await sendJson(ctx, 200, { ok: false });
          return;
        }
        await sendJson(ctx, 200, { ok: true, signed_download_url: signBlobUrl(e.blobId, 'r'), matched_key: e.key });
        return;
      }
    }
  }

  // ---- v1 REST -----------------------------------------------------------------------------------

  async function handleV1(ctx: Ctx, u: URL, body: unknown): Promise<void> {
    const { rec, req } = ctx;
    if (rec.op === 'v1.unknown') throw new HttpError(404, 'NotFound', `no route for ${rec.method} ${rec.path}`);
    const claims = verifyToken(req.headers.authorization);
    const b = (body ?? {}) as Record<string, unknown>;
    const q = u.searchParams;

    switch (rec.op) {
      case 'v1.getCacheEntry': {
        const keys = (q.get('keys') ?? '').split(',').filter((k) => k !== '');
        if (keys.length === 0) throw new HttpError(400, 'ArgumentException', 'keys is required');
        if (keys.length > 10) throw new HttpError(400, 'ArgumentException', 'at most 10 keys');
        keys.forEach((k) => validateKey(k));
        const version = q.get('version');
        if (!version) throw new HttpError(400, 'ArgumentException', 'version is required');
        const scopes = readableScopes(claims);
        if (scopes.length === 0) {
          throw new HttpError(403, 'CacheReadDeniedException', 'cache read denied: the runtime token has no readable cache scope');
        }
        const e = lookup(scopes, keys, version);
        if (!e) {
          rec.status = 204;
          ctx.res.writeHead(204, commonHeaders());
          ctx.res.end();
          return;
        }
        await sendJson(ctx, 200, {
          scope: e.scope,
          cacheKey: e.key,
          cacheVersion: e.version,
          creationTime: e.createdAt.toISOString(),
          archiveLocation: signBlobUrl(e.blobId, 'r'),
        });
        return;
      }
      case 'v1.listCaches': {
        const key = q.get('key') ?? '';
        const scopes = readableScopes(claims);
        const list = entries
          .filter((e) => e.committed && scopes.includes(e.scope) && (key === '' || sameKey(e.key, key)))
          .sort(newestFirst);
        await sendJson(ctx, 200, {
          totalCount: list.length,
          artifactCaches: list.map((e) => ({
            cacheKey: e.key,
            cacheVersion: e.version,
            scope: e.scope,
            creationTime: e.createdAt.toISOString(),
          })),
        });
        return;
      }
      case 'v1.reserveCache': {
        const key = validateKey(b.key);
        const version = validateVersion(b.version);
        const scope = writableScope(claims);
        if (!scope) throw new HttpError(403, 'CacheWriteDeniedException', 'cache write denied: the runtime token has no writable cache scope');
        if (findEntry(scope, key, version)) {
          throw new HttpError(
            409,
            'ArtifactCacheAlreadyExistsException',
            `Cache already exists. Scope: ${scope}, Key: ${key}, Version: ${version}`,
          );
        }
        const e = newEntry(scope, key, version, 'v1');
        e.chunks = [];
        await fsp.writeFile(blobFileFor(e), Buffer.alloc(0));
        await sendJson(ctx, 201, { cacheId: e.id });
        return;
      }
      case 'v1.uploadChunk': {
        const e = v1Entry(rec.path, claims);
        if (e.committed) throw new HttpError(409, 'ArtifactCacheAlreadyCommittedException', `Cache ${e.id} is already committed`);
        const cr = /^bytes (\d+)-(\d+)\/(\*|\d+)$/.exec(String(req.headers['content-range'] ?? ''));
        if (!cr) throw new HttpError(400, 'ArgumentException', 'Content-Range header "bytes start-end/*" is required');
        const start = Number(cr[1]);
        const end = Number(cr[2]);
        if (end < start) throw new HttpError(400, 'ArgumentException', 'invalid Content-Range');
        let got = 0;
        const counter = new Transform({
          transform(c: Buffer, _enc, cb) {
            got += c.length;
            cb(null, c);
          },
        });
        try {
          await pipeline(req, counter, fs.createWriteStream(blobFileFor(e), { flags: 'r+', start }));
        } catch {
          return; // client went away mid-chunk: nothing to answer
        }
        rec.bodyBytes = got;
        if (got !== end - start + 1) {
          throw new HttpError(400, 'ArgumentException', `Content-Range says ${end - start + 1} bytes but ${got} were sent`);
        }
        e.chunks!.push([start, end]);
        rec.status = 204;
        ctx.res.writeHead(204, commonHeaders());
        ctx.res.end();
        return;
      }
      case 'v1.commitCache': {
        const e = v1Entry(rec.path, claims);
        if (e.committed) throw new HttpError(409, 'ArtifactCacheAlreadyCommittedException', `Cache ${e.id} is already committed`);
        const size = Number(b.size);
        if (!Number.isSafeInteger(size) || size < 0) throw new HttpError(400, 'ArgumentException', 'size is required');
        const covered = coveredPrefix(e.chunks ?? []);
        if (covered !== size) {
          throw new HttpError(400, 'ArgumentException', `The cache size ${size} does not match the uploaded content (${covered} contiguous bytes)`);
        }
        const file = blobFileFor(e);
        await fsp.truncate(file, size);
        await commitBlob(blobs.get(e.blobId)!, [{ file, size }]);
        commitEntry(e, size);
        rec.status = 204;
        ctx.res.writeHead(204, commonHeaders());
        ctx.res.end();
        return;
      }
    }
  }

  const blobFileFor = (e: Entry) => path.join(storageDir, `${e.blobId}.v1`);

  function v1Entry(p: string, claims: TokenClaims): Entry {
    const id = Number(p.slice(p.lastIndexOf('/') + 1));
    const scope = writableScope(claims);
    const e = entries.find((x) => x.id === id && x.via === 'v1');
    if (!e || e.scope !== scope) throw new HttpError(404, 'ArtifactCacheNotFoundException', `Cache ${id} not found`);
    return e;
  }

  /** Length of the contiguous range starting at 0 covered by the chunks; -1 if there is a gap. */
  function coveredPrefix(chunks: Array<[number, number]>): number {
    const sorted = [...chunks].sort((a, b) => a[0] - b[0]);
    let next = 0;
    for (const [s, e] of sorted) {
      if (s > next) return -1;
      next = Math.max(next, e + 1);
    }
    return next;
  }

  // ---- blob store --------------------------------------------------------------------------------

  async function handleBlob(ctx: Ctx, u: URL): Promise<void> {
    const { rec, req } = ctx;
    const m = /^\/blob\/cache\/([0-9a-f-]{36})$/.exec(u.pathname);
    if (!m) throw new HttpError(400, 'InvalidUri', 'The requested URI does not represent any resource on the server.');
    const blobId = m[1];
    const q = u.searchParams;
    if (rec.op === 'blob.unknown') throw new HttpError(400, 'UnsupportedHttpVerb', `${rec.method} is not supported here`);
    const writing = rec.method === 'PUT';
    verifyBlobSig(blobId, q, writing ? 'w' : 'r');
    const blob = blobs.get(blobId);
    if (!blob) throw new HttpError(404, 'BlobNotFound', 'The specified blob does not exist.');
    if (writing && !blob.writable) {
      throw new HttpError(409, 'BlobImmutable', 'The cache entry this blob belongs to is committed; it cannot be modified.');
    }

    switch (rec.op) {
      case 'blob.putBlob': {
        const type = req.headers['x-ms-blob-type'];
        if (type === undefined) throw new HttpError(400, 'MissingRequiredHeader', 'An HTTP header that is mandatory for this request is not specified: x-ms-blob-type');
        if (type !== 'BlockBlob') throw new HttpError(400, 'InvalidHeaderValue', `Unsupported x-ms-blob-type: ${type}`);
        const stored = await storeBody(ctx, newFile('blob'));
        if (!stored) return;
        await commitBlob(blob, [{ file: stored.file, size: stored.size }]);
        await send(ctx, 201, {
          ...azureHeaders(ctx),
          ETag: blob.etag,
          'Last-Modified': blob.lastModified.toUTCString(),
          'Content-MD5': stored.md5,
          'x-ms-request-server-encrypted': 'true',
        }, null);
        return;
      }
      case 'blob.putBlock': {
        const blockId = q.get('blockid');
        if (!blockId) throw new HttpError(400, 'MissingRequiredQueryParameter', 'blockid is required');
        const raw = Buffer.from(blockId, 'base64');
        if (raw.length === 0 || raw.length > 64 || raw.toString('base64') !== blockId) {
          throw new HttpError(400, 'InvalidQueryParameterValue', 'blockid must be base64 of at most 64 bytes');
        }
        if (blob.blockIdLength !== undefined && blob.blocks.size > 0 && blob.blockIdLength !== raw.length) {
          throw new HttpError(400, 'InvalidBlobOrBlock', 'all block ids of a blob must have the same length');
        }
        const stored = await storeBody(ctx, newFile('block'));
        if (!stored) return;
        const old = blob.blocks.get(blockId);
        if (old) await fsp.rm(old.file, { force: true });
        blob.blocks.set(blockId, { file: stored.file, size: stored.size });
        blob.blockIdLength = raw.length;
        await send(ctx, 201, {
          ...azureHeaders(ctx),
          'Content-MD5': stored.md5,
          'x-ms-request-server-encrypted': 'true',
        }, null);
        return;
      }
      case 'blob.putBlockList': {
        const xml = (await readBody(req, 8 * 1024 * 1024)).toString('utf8');
        const ids: string[] = [];
        const re = /<(Latest|Uncommitted|Committed)>([^<]*)<\/\1>/g;
        let mm: RegExpExecArray | null;
        while ((mm = re.exec(xml))) {
          if (mm[1] === 'Committed') throw new HttpError(400, 'InvalidBlockList', 'committed blocks are not retained by this server');
          ids.push(mm[2].trim());
        }
        if (!/<BlockList\b/.test(xml)) throw new HttpError(400, 'InvalidXmlDocument', 'expected a BlockList document');
        const parts = ids.map((id) => {
          const b = blob.blocks.get(id);
          if (!b) throw new HttpError(400, 'InvalidBlockList', `The specified block list is invalid (unknown block ${id}).`);
          return b;
        });
        await commitBlob(blob, parts);
        await send(ctx, 201, {
          ...azureHeaders(ctx),
          ETag: blob.etag,
          'Last-Modified': blob.lastModified.toUTCString(),
          'x-ms-request-server-encrypted': 'true',
        }, null);
        return;
      }
      case 'blob.get':
      case 'blob.head': {
        if (!blob.parts) throw new HttpError(404, 'BlobNotFound', 'The specified blob does not exist.');
        const ifMatch = req.headers['if-match'];
        if (ifMatch && ifMatch !== '*' && ifMatch !== blob.etag) {
          throw new HttpError(412, 'ConditionNotMet', 'The condition specified using HTTP conditional header(s) is not met.');
        }
        const ifNoneMatch = req.headers['if-none-match'];
        if (ifNoneMatch && (ifNoneMatch === '*' || ifNoneMatch === blob.etag)) {
          rec.status = 304;
          ctx.res.writeHead(304, { ...azureHeaders(ctx), ETag: blob.etag });
          ctx.res.end();
          return;
        }
        const headers: Record<string, string> = {
          ...azureHeaders(ctx),
          'Content-Type': 'application/octet-stream',
          ETag: blob.etag,
          'Last-Modified': blob.lastModified.toUTCString(),
          'Accept-Ranges': 'bytes',
          'x-ms-blob-type': 'BlockBlob',
          'x-ms-creation-time': blob.createdAt.toUTCString(),
          'x-ms-lease-state': 'available',
          'x-ms-lease-status': 'unlocked',
          'x-ms-server-encrypted': 'true',
        };
        const rangeHeader = req.headers['x-ms-range'] ?? req.headers['range'];
        const range = typeof rangeHeader === 'string' ? parseRange(rangeHeader, blob.size) : undefined;
        if (range === 'unsatisfiable') {
          throw new HttpError(416, 'InvalidRange', 'The range specified is invalid for the current size of the resource.');
        }
        if (range) {
          const length = range.end - range.start + 1;
          headers['Content-Range'] = `bytes ${range.start}-${range.end}/${blob.size}`;
          headers['Content-Length'] = String(length);
          headers['x-ms-blob-content-length'] = String(blob.size);
          await send(ctx, 206, headers, { parts: blob.parts, start: range.start, length });
          return;
        }
        headers['Content-Length'] = String(blob.size);
        await send(ctx, 200, headers, { parts: blob.parts, start: 0, length: blob.size });
        return;
      }
    }
  }

  /** Stream the request body to `file`; null if the client went away (nothing is sent then). */
  async function storeBody(ctx: Ctx, file: string): Promise<{ file: string; size: number; md5: string } | null> {
    const { req, rec } = ctx;
    const md5 = crypto.createHash('md5');
    let size = 0;
    const counter = new Transform({
      transform(c: Buffer, _enc, cb) {
        size += c.length;
        md5.update(c);
        cb(null, c);
      },
    });
    try {
      await pipeline(req, counter, fs.createWriteStream(file));
    } catch {
      await fsp.rm(file, { force: true });
      return null; // client went away mid-body: nothing to answer
    }
    rec.bodyBytes = size;
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) !== size) {
      await fsp.rm(file, { force: true });
      throw new HttpError(400, 'InvalidInput', `Content-Length ${declared} but ${size} bytes received`);
    }
    const digest = md5.digest('base64');
    const want = req.headers['content-md5'];
    if (typeof want === 'string' && want !== digest) {
      await fsp.rm(file, { force: true });
      throw new HttpError(400, 'Md5Mismatch', 'The MD5 value specified in the request did not match with the MD5 value calculated by the server.');
    }
    return { file, size, md5: digest };
  }

  /**
   * Makes `parts` the blob's committed content (a single PUT or a block list), dropping what was
   * there and every staged block the list left out.
   */
  async function commitBlob(blob: Blob, parts: Part[]): Promise<void> {
    const keep = new Set(parts.map((p) => p.file));
    const drop = new Set([...(blob.parts ?? []), ...blob.blocks.values()].map((p) => p.file).filter((f) => !keep.has(f)));
    for (const f of drop) await fsp.rm(f, { force: true });
    blob.blocks.clear();
    blob.blockIdLength = undefined;
    blob.parts = parts;
    blob.size = parts.reduce((n, p) => n + p.size, 0);
    blob.etag = newEtag();
    blob.lastModified = new Date();
  }

  // ---- server ------------------------------------------------------------------------------------

  const server = http.createServer({ requestTimeout: 0 }, (req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(500, { 'Content-Type': 'text/plain' });
        res.end(String((e as Error)?.stack ?? e));
      } else {
        res.destroy();
      }
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => socket.destroy());

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  baseUrl = `http://127.0.0.1:${port}/`;

  const info = (e: Entry): CacheEntryInfo => ({
    id: e.id,
    key: e.key,
    version: e.version,
    scope: e.scope,
    size: e.size,
    createdAt: e.createdAt,
    committed: e.committed,
    via: e.via,
  });

  return {
    url: baseUrl,
    token: defaultToken,
    requests,
    storageDir,
    env(protocol, o = {}) {
      const token = o.token ?? defaultToken;
      if (protocol === 'v2') {
        return {
          ACTIONS_CACHE_SERVICE_V2: 'True',
          ACTIONS_RESULTS_URL: baseUrl,
          ACTIONS_RUNTIME_TOKEN: token,
          ACTIONS_CACHE_URL: '',
        };
      }
      return {
        ACTIONS_CACHE_URL: baseUrl,
        ACTIONS_RUNTIME_TOKEN: token,
        ACTIONS_CACHE_SERVICE_V2: '',
        ACTIONS_RESULTS_URL: '',
      };
    },
    makeToken,
    blobBase(url) {
      blobBaseUrl = url;
    },
    entries(o = {}) {
      return entries
        .filter((e) => o.includePending || e.committed)
        .sort(newestFirst)
        .map(info);
    },
    async seed(s) {
      const scope = s.scope ?? writableScope({ scopes: opts.scopes ?? [{ Scope: 'refs/heads/main', Permission: 3 }] }) ?? 'refs/heads/main';
      validateKey(s.key);
      validateVersion(s.version);
      if (findEntry(scope, s.key, s.version)) throw new Error(`entry ${s.key} (${s.version}) already exists in ${scope}`);
      const e = newEntry(scope, s.key, s.version, 'seed');
      const file = newFile('blob');
      if (s.file) await fsp.copyFile(s.file, file);
      else await fsp.writeFile(file, s.data ?? Buffer.alloc(0));
      const size = (await fsp.stat(file)).size;
      await commitBlob(blobs.get(e.blobId)!, [{ file, size }]);
      commitEntry(e, size);
      if (s.createdAt) e.createdAt = s.createdAt;
      return info(e);
    },
    async replace(key, data) {
      const hits = entries.filter((e) => e.committed && sameKey(e.key, key));
      if (!hits.length) throw new Error(`no committed entry ${key}`);
      for (const e of hits) {
        const file = newFile('blob');
        await fsp.writeFile(file, data);
        await commitBlob(blobs.get(e.blobId)!, [{ file, size: data.length }]);
        e.size = data.length;
      }
    },
    inject(spec) {
      const f: ActiveFault = { spec, remaining: spec.times ?? 1, hits: 0 };
      faults.push(f);
      return {
        get hits() {
          return f.hits;
        },
        get remaining() {
          return f.remaining;
        },
        cancel() {
          f.remaining = 0;
        },
      };
    },
    clearFaults() {
      faults.length = 0;
    },
    async close() {
      if (closed) return;
      closed = true;
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await done;
      await fsp.rm(storageDir, { recursive: true, force: true });
    },
  };
}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);
}

/** Parse a single `bytes=` range against `size`; undefined = serve the whole blob. */
function parseRange(h: string, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(h.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined; // multi-range or garbage: ignore, like HTTP allows
  let start: number;
  let end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return undefined;
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

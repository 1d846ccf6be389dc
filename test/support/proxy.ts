// A forward HTTP proxy on loopback for tests, as a runner's proxy sees the traffic: absolute-URI
// requests (any method, bodies streamed both ways) and CONNECT tunnels, each one recorded. It
// forwards to loopback hosts only, so a test cannot reach out through it.
import * as http from 'node:http';
import * as net from 'node:net';
import { isLoopback } from '../../src/cache/oci.js';

export interface ProxyRequest {
  method: string;
  /** The absolute URI, or host:port for a CONNECT. */
  target: string;
  /** The Proxy-Authorization header it carried, if any. */
  auth?: string;
}

export interface TestProxy {
  /** http://127.0.0.1:PORT */
  url: string;
  requests: ProxyRequest[];
  close(): Promise<void>;
}

export interface ProxyOptions {
  /** Answer every CONNECT with this status line instead of tunnelling (e.g. `403 Forbidden`). */
  refuseConnect?: string;
  /** Accept CONNECTs and then say nothing (a proxy that stalls). */
  silentConnect?: boolean;
}

/** Starts the proxy on a free loopback port; close() ends every connection it holds. */
export async function startProxy(opts: ProxyOptions = {}): Promise<TestProxy> {
  const requests: ProxyRequest[] = [];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    return s;
  };
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method ?? '', target: req.url ?? '', auth: req.headers['proxy-authorization'] });
    let target: URL;
    try {
      target = new URL(req.url ?? '');
    } catch {
      return void res.writeHead(400).end('a forward proxy takes absolute URIs\n');
    }
    if (target.protocol !== 'http:' || !isLoopback(target.hostname)) return void res.writeHead(403).end('loopback http only\n');
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    delete headers['proxy-connection'];
    const up = http.request({ host: target.hostname.replace(/^\[|\]$/g, ''), port: target.port || 80, path: `${target.pathname}${target.search}`, method: req.method, headers, agent: false }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.on('connection', track);
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    requests.push({ method: 'CONNECT', target: req.url ?? '', auth: req.headers['proxy-authorization'] });
    track(client);
    if (opts.silentConnect) return;
    const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(req.url ?? '');
    if (opts.refuseConnect || !m || !isLoopback(m[1])) return void client.end(`HTTP/1.1 ${opts.refuseConnect ?? '403 Forbidden'}\r\n\r\n`);
    const up = track(net.connect(Number(m[2]), m[1]));
    up.on('connect', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    up.on('close', () => client.destroy());
    client.on('close', () => up.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    requests,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

// The runner's network setup, passed on to guests: self-hosted runners often sit behind an HTTP
// proxy, and often behind a TLS-inspecting one whose CA the runner trusts locally. Host downloads
// honour the proxy through the toolkit's HTTP client; guests get it for their package manager and
// in /etc/environment (read by pam_env on SSH logins), and they trust the runner's local CAs. A
// proxy on the runner's loopback is reached from the guest at QEMU user networking's 10.0.2.2.
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface ProxySettings {
  http?: string;
  https?: string;
  no?: string;
}

export const GUEST_HOST_ADDRESS = '10.0.2.2';

export function runnerProxy(env: NodeJS.ProcessEnv = process.env): ProxySettings | undefined {
  const p: ProxySettings = {
    http: env.http_proxy || env.HTTP_PROXY || undefined,
    https: env.https_proxy || env.HTTPS_PROXY || undefined,
    no: env.no_proxy || env.NO_PROXY || undefined,
  };
  return p.http || p.https ? p : undefined;
}

/** The proxy as the guest must name it: loopback hosts become the host's address on the user network. */
export function guestProxy(p: ProxySettings): ProxySettings {
  const rewrite = (u?: string) => {
    if (!u) return u;
    try {
      const url = new URL(/^[a-z]+:\/\//i.test(u) ? u : `http://${u}`);
      if (url.hostname === 'localhost' || url.hostname.startsWith('127.') || url.hostname === '[::1]') url.hostname = GUEST_HOST_ADDRESS;
      return url.toString().replace(/\/$/, '');
    } catch {
      return u;
    }
  };
  return { http: rewrite(p.http), https: rewrite(p.https), no: p.no };
}

export interface GuestFile {
  path: string;
  content: string;
}

const APT_CONF = '/etc/apt/apt.conf.d/95ryra-vm-proxy';
const DNF_CONF = '/etc/dnf/dnf.conf';

/** Files that give the guest's package manager and login sessions the proxy. */
export function proxyFiles(p: ProxySettings, manager: 'apt' | 'dnf'): GuestFile[] {
  const g = guestProxy(p);
  const env = [
    ...(g.http ? [`http_proxy=${g.http}`, `HTTP_PROXY=${g.http}`] : []),
    ...(g.https ? [`https_proxy=${g.https}`, `HTTPS_PROXY=${g.https}`] : []),
    ...(g.no ? [`no_proxy=${g.no}`, `NO_PROXY=${g.no}`] : []),
  ];
  const files: GuestFile[] = [{ path: '/etc/environment', content: env.join('\n') + '\n' }];
  if (manager === 'apt') {
    const lines = [...(g.http ? [`Acquire::http::Proxy "${g.http}";`] : []), ...(g.https ? [`Acquire::https::Proxy "${g.https}";`] : [])];
    files.push({ path: APT_CONF, content: lines.join('\n') + '\n' });
  } else {
    files.push({ path: DNF_CONF, content: `proxy=${g.https ?? g.http}\n` });
  }
  return files;
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** A guest command that applies `proxyFiles` (appending to /etc/environment and dnf.conf). */
export function proxySetupCommand(p: ProxySettings, manager: 'apt' | 'dnf'): string {
  return proxyFiles(p, manager)
    .map((f) => (f.path === APT_CONF ? `printf %s ${q(f.content)} | sudo tee ${f.path} >/dev/null` : `printf %s ${q(f.content)} | sudo tee -a ${f.path} >/dev/null`))
    .join(' && ');
}

/**
 * Removes what `proxySetupCommand` added: a layer must not keep a runner's proxy. (Neither file
 * carries a proxy line of its own in a cloud image; pam_env and dnf take no inline comments to mark ours.)
 */
export const PROXY_CLEANUP =
  `sudo rm -f ${APT_CONF}; sudo sed -i -E '/^(http|https|no|HTTP|HTTPS|NO)_(proxy|PROXY)=/d' /etc/environment; ` +
  `[ ! -f ${DNF_CONF} ] || sudo sed -i '/^proxy=/d' ${DNF_CONF}; true`;

/** Where a runner keeps the CAs it trusts beyond the distro's (Debian/Ubuntu, Fedora/RHEL). */
export const LOCAL_CA_DIRS = ['/usr/local/share/ca-certificates', '/etc/pki/ca-trust/source/anchors'];

/** The runner's locally added CA certificates (PEM), each once. */
export function runnerCAs(dirs = LOCAL_CA_DIRS): string[] {
  const pems = new Set<string>();
  for (const dir of dirs) {
    let files: string[] = [];
    try {
      files = fs.readdirSync(dir, { recursive: true }) as string[];
    } catch {
      continue;
    }
    for (const f of files.filter((n) => /\.(crt|pem)$/.test(n))) {
      const text = fs.readFileSync(path.join(dir, f), 'utf8');
      for (const m of text.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)) pems.add(m[0]);
    }
  }
  return [...pems];
}

/** The runner's CAs in a guest: one file, appended to the system bundle (no rehash: seconds saved per boot under emulation). */
export const GUEST_CA_FILE = '/usr/local/share/ca-certificates/ryra-vm-runner.crt';
const BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

/** A root shell script (sudo sh -s) that makes a running guest trust `pems`, for TLS clients and Node/bun. */
export function caSetupScript(pems: string[]): string {
  const body = pems.join('\n') + '\n';
  return [
    `cat > ${GUEST_CA_FILE} <<'RYRA_CA'\n${body}RYRA_CA`,
    `[ -f ${BUNDLE} ] && cat ${GUEST_CA_FILE} >> ${BUNDLE}`,
    `sed -i '/^NODE_EXTRA_CA_CERTS=/d' /etc/environment && echo NODE_EXTRA_CA_CERTS=${GUEST_CA_FILE} >> /etc/environment`,
    '',
  ].join('\n');
}

/** Undoes caSetupScript in an image before it is kept: the bundle is made anew from the distro's CAs. */
export const CA_CLEANUP = `if [ -f ${GUEST_CA_FILE} ]; then sudo rm -f ${GUEST_CA_FILE}; sudo sed -i '/^NODE_EXTRA_CA_CERTS=/d' /etc/environment; command -v update-ca-certificates >/dev/null && sudo update-ca-certificates --fresh >/dev/null 2>&1; fi; true`;

/**
 * The runner's proxy and local CAs for a guest's first boot, as cloud-init seed fields (plus any
 * `extraFiles`): the files written before packages are installed, and the CA script as a bootcmd.
 */
export function runnerSeed(manager: 'apt' | 'dnf', extraFiles: GuestFile[] = []): { files?: GuestFile[]; bootcmd?: string[] } {
  const proxy = runnerProxy();
  const cas = runnerCAs();
  const files = [...(proxy ? proxyFiles(proxy, manager) : []), ...extraFiles];
  return { ...(files.length ? { files } : {}), ...(cas.length ? { bootcmd: [caSetupScript(cas)] } : {}) };
}

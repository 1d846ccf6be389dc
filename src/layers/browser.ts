// The browser layer's install: bun + Playwright + chromium under /opt/playwright, owned by the guest
// user, with bun on the PATH of every later session (interactive or not: /usr/local/bin) and a
// plain Playwright script in /opt/playwright launching chromium without options.
//
// Two sources: `upstream` is the seed's script (bun.sh's installer, Playwright's CDN); `registries`
// takes bun from the npm registry (@oven/bun-linux-*), Playwright from npm and the distro's own
// chromium, wired in through PLAYWRIGHT_BROWSERS_PATH. `auto` uses upstream when it answers.
// The script follows the guest's package manager; the source used is left in /opt/playwright.
import type { BrowserSource } from '../inputs.js';

export const BROWSER_MEMORY_MB = 4096; // chromium's install needs the room (the seed's figure)
export const BROWSER_CPUS = 2;
export const BUN_VERSION = '1.4.5';
export const PLAYWRIGHT_VERSION = '1.65.1';
/** Where the install leaves the name of the source it used. */
export const SOURCE_FILE = '/opt/playwright/.ryra-source';

const PM = {
  apt: {
    update: 'sudo apt-get update -qq',
    install: 'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends',
    chromium: 'chromium fonts-liberation',
    chromiumBinary: '/usr/lib/chromium/chromium',
  },
  dnf: {
    update: 'true',
    install: 'sudo dnf install -y -q',
    chromium: 'chromium liberation-fonts',
    chromiumBinary: '/usr/lib64/chromium-browser/chromium-browser',
  },
} as const;

/** The seed's script, with its apt lines following the package manager, plus bun in /usr/local/bin. */
function upstream(pm: (typeof PM)['apt' | 'dnf']): string {
  return `install_upstream() {
${pm.update} && ${pm.install} unzip curl >/dev/null 2>&1
curl -fsSL https://bun.sh/install | bash
export BUN_INSTALL="$HOME/.bun"
export PATH="$BUN_INSTALL/bin:$PATH"
sudo mkdir -p /opt/playwright && sudo chown $USER:$USER /opt/playwright
cd /opt/playwright
bun init -y >/dev/null 2>&1
bun add playwright @playwright/test
bunx playwright install chromium --with-deps
echo 'export BUN_INSTALL="$HOME/.bun"' >> $HOME/.bashrc
echo 'export PATH="$BUN_INSTALL/bin:$PATH"' >> $HOME/.bashrc
# The seed's .bashrc lines reach interactive shells only; non-interactive SSH sessions find bun here.
sudo ln -sf "$HOME/.bun/bin/bun" /usr/local/bin/bun
sudo ln -sf bun /usr/local/bin/bunx
}`;
}

/** bun, Playwright and chromium from package registries only. */
function registries(pm: (typeof PM)['apt' | 'dnf']): string {
  return `install_registries() {
${pm.update}
${pm.install} ${pm.chromium} ca-certificates curl >/dev/null
case $(uname -m) in
  x86_64) if grep -qw avx2 /proc/cpuinfo; then pkgs="bun-linux-x64 bun-linux-x64-baseline"; else pkgs="bun-linux-x64-baseline"; fi ;;
  aarch64) pkgs="bun-linux-aarch64" ;;
  *) echo "no bun build for $(uname -m)" >&2; return 1 ;;
esac
tmp=$(mktemp -d)
for pkg in $pkgs; do
  meta=$(curl -fsSL "https://registry.npmjs.org/@oven/$pkg/${BUN_VERSION}")
  url=$(printf '%s' "$meta" | sed -n 's/.*"tarball": *"\\([^"]*\\)".*/\\1/p')
  sri=$(printf '%s' "$meta" | sed -n 's/.*"integrity": *"sha512-\\([^"]*\\)".*/\\1/p')
  curl -fsSL -o "$tmp/bun.tgz" "$url"
  [ "$(printf '%s' "$sri" | base64 -d | od -An -v -tx1 | tr -d ' \\n')" = "$(sha512sum "$tmp/bun.tgz" | cut -d' ' -f1)" ] || { echo "bun tarball: integrity mismatch" >&2; return 1; }
  tar -xzf "$tmp/bun.tgz" -C "$tmp" package/bin/bun
  # The x64 build needs AVX2; the baseline build is the fallback when it cannot run.
  "$tmp/package/bin/bun" --version >/dev/null 2>&1 && break
  rm -f "$tmp/package/bin/bun"
done
[ -x "$tmp/package/bin/bun" ] || { echo "no bun build runs on this CPU" >&2; return 1; }
sudo install -m 0755 "$tmp/package/bin/bun" /usr/local/bin/bun
sudo ln -sf bun /usr/local/bin/bunx
rm -rf "$tmp"
sudo install -d -o "$(id -un)" -g "$(id -gn)" /opt/playwright
cd /opt/playwright
[ -f package.json ] || printf '{ "name": "playwright-layer", "private": true, "type": "module" }\\n' > package.json
bun add playwright@${PLAYWRIGHT_VERSION} @playwright/test@${PLAYWRIGHT_VERSION}
# Playwright looks for its browsers by revision under PLAYWRIGHT_BROWSERS_PATH: point both of its
# chromium entries (full and headless shell) at the distro's chromium.
cat > link-chromium.mjs <<'EOF'
import { chromium } from 'playwright';
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
const target = process.env.CHROMIUM_BIN;
const link = (exe) => {
  mkdirSync(dirname(exe), { recursive: true });
  rmSync(exe, { force: true });
  symlinkSync(target, exe);
  writeFileSync(dirname(dirname(exe)) + '/INSTALLATION_COMPLETE', '');
};
link(chromium.executablePath());
for (let i = 0; ; i++) {
  try {
    const b = await chromium.launch();
    console.log('chromium', b.version(), 'launches headless');
    await b.close();
    break;
  } catch (e) {
    const m = /Executable doesn't exist at (\\S+)/.exec(String(e));
    if (!m || i > 2) throw e;
    link(m[1]);
  }
}
EOF
export PLAYWRIGHT_BROWSERS_PATH=/opt/playwright/browsers
CHROMIUM_BIN=${pm.chromiumBinary} bun link-chromium.mjs
# Every session, interactive or not (pam_env reads /etc/environment on SSH logins).
sudo sed -i '/^PLAYWRIGHT_BROWSERS_PATH=/d; /^NODE_PATH=/d' /etc/environment
printf 'PLAYWRIGHT_BROWSERS_PATH=/opt/playwright/browsers\\nNODE_PATH=/opt/playwright/node_modules\\n' | sudo tee -a /etc/environment >/dev/null
}`;
}

/** The install script for a source and package manager. */
export function browserInstallScript(source: BrowserSource, manager: 'apt' | 'dnf'): string {
  const pm = PM[manager];
  return `set -e
source=${source}
${upstream(pm)}
${registries(pm)}
if [ "$source" = auto ]; then
  if curl -fsS --max-time 15 -o /dev/null https://bun.sh/install && curl -fsS --max-time 15 -o /dev/null https://cdn.playwright.dev/; then
    source=upstream
  else
    echo "bun.sh or Playwright's CDN does not answer: installing from package registries"
    source=registries
  fi
fi
install_$source
echo "$source" | sudo tee ${SOURCE_FILE} >/dev/null
`;
}

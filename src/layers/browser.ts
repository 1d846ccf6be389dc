// The browser layer's install script (the seed's): unzip, bun, playwright + chromium under
// /opt/playwright, bun on PATH for later SSH sessions. Tests replace it (bun.sh and playwright's
// CDN are unreachable there) through RYRA_VM_BROWSER_SCRIPT, a file path.
import * as fs from 'node:fs';

export const BROWSER_MEMORY_MB = 4096; // chromium's install needs the room
export const BROWSER_CPUS = 2;

export const BROWSER_INSTALL_SCRIPT = `set -e
sudo apt-get update -qq && sudo apt-get install -y -qq unzip >/dev/null 2>&1
curl -fsSL https://bun.sh/install | bash
export BUN_INSTALL="$HOME/.bun"
export PATH="$BUN_INSTALL/bin:$PATH"

# A global playwright project, so chromium is cached system-wide
sudo mkdir -p /opt/playwright && sudo chown $USER:$USER /opt/playwright
cd /opt/playwright
bun init -y >/dev/null 2>&1
bun add playwright @playwright/test
bunx playwright install chromium --with-deps

# bun on PATH for future SSH sessions
echo 'export BUN_INSTALL="$HOME/.bun"' >> $HOME/.bashrc
echo 'export PATH="$BUN_INSTALL/bin:$PATH"' >> $HOME/.bashrc
`;

export function browserInstallScript(env: NodeJS.ProcessEnv = process.env): string {
  const file = env.RYRA_VM_BROWSER_SCRIPT;
  return file ? fs.readFileSync(file, 'utf8') : BROWSER_INSTALL_SCRIPT;
}

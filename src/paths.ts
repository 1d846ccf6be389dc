// Where the runtime state lives: under RUNNER_TEMP in Actions (wiped after the job), else a
// per-user directory.
import * as os from 'node:os';
import * as path from 'node:path';

export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.RYRA_VM_RUNTIME_DIR) return path.resolve(env.RYRA_VM_RUNTIME_DIR);
  if (env.RUNNER_TEMP) return path.join(env.RUNNER_TEMP, 'ryra-vm');
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, 'ryra-vm');
  return path.join(os.tmpdir(), `ryra-vm-${process.getuid?.() ?? 'user'}`);
}

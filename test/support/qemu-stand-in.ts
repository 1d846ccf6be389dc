// A qemu-system-* on PATH that behaves as on a host of a given KVM shape (qemu-stand-in.sh), so a
// test that needs a host state makes it rather than depending on the host it lands on.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** What KVM does on the host being stood in for; see qemu-stand-in.sh. */
export type KvmShape = 'missing' | 'abort' | 'hang' | 'works';

export interface QemuStandIn {
  /** The stand-in for qemu-system-x86_64 (pass it where a QEMU path is taken). */
  qemu: string;
  /** Environment that puts the stand-ins first on PATH (the engine finds QEMU there). */
  env: { PATH: string };
}

const SCRIPT = fileURLToPath(new URL('./qemu-stand-in.sh', import.meta.url));

/** The first `name` on PATH outside `skip`: a stand-in wraps whatever QEMU was there before it. */
function onPath(name: string, skip: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, name);
    if (dir && path.resolve(dir) !== skip && fs.existsSync(p)) return p;
  }
  return undefined;
}

/** Writes wrappers for every qemu-system-* on PATH into `dir` (made if missing). */
export function qemuStandIn(shape: KvmShape, dir: string): QemuStandIn {
  fs.mkdirSync(dir, { recursive: true });
  const skip = path.resolve(dir);
  for (const name of ['qemu-system-x86_64', 'qemu-system-aarch64']) {
    const real = onPath(name, skip);
    if (!real) continue;
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    fs.writeFileSync(path.join(dir, name), `#!/bin/sh\nexec ${q(SCRIPT)} ${shape} ${q(real)} "$@"\n`, { mode: 0o755 });
  }
  const qemu = path.join(dir, 'qemu-system-x86_64');
  if (!fs.existsSync(qemu)) throw new Error(`qemu-system-x86_64 is not on PATH (${process.env.PATH}): install QEMU (scripts/setup.sh)`);
  return { qemu, env: { PATH: `${dir}${path.delimiter}${process.env.PATH ?? ''}` } };
}

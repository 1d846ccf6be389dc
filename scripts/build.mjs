// Bundles the action's entry points into dist/ (or the directory given as argv[2]).
// ESM because the toolkit is ESM-only; a banner gives bundled CommonJS code (ssh2) the
// require/__dirname it expects; native .node addons stay out (ssh2 falls back to pure JS).
import { build } from 'esbuild';
import * as fs from 'node:fs';
import * as path from 'node:path';

const outdir = path.resolve(process.argv[2] ?? 'dist');
fs.rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: { main: 'src/main.ts', post: 'src/post.ts', cli: 'src/cli.ts', 'cache-worker': 'src/cache/worker.ts' },
  outdir,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  external: ['*.node'],
  legalComments: 'none',
  logLevel: 'warning',
  // Free references to __filename/__dirname become the banner's names; modules that declare their
  // own (some toolkit code does) keep theirs, so nothing is declared twice.
  define: { __filename: '__ryraFilename', __dirname: '__ryraDirname' },
  banner: {
    js: [
      "import { createRequire as __ryraCreateRequire } from 'node:module';",
      "import { fileURLToPath as __ryraFileURLToPath } from 'node:url';",
      "import { dirname as __ryraPathDirname } from 'node:path';",
      'const require = __ryraCreateRequire(import.meta.url);',
      'const __ryraFilename = __ryraFileURLToPath(import.meta.url);',
      'const __ryraDirname = __ryraPathDirname(__ryraFilename);',
    ].join('\n'),
  },
});
fs.chmodSync(path.join(outdir, 'cli.js'), 0o755);
fs.writeFileSync(path.join(outdir, 'package.json'), '{ "type": "module" }\n');

import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __filename = __ryraFileURLToPath(import.meta.url);
const __dirname = __ryraDirname(__filename);
import {
  runPost
} from "./chunks/chunk-NRGAWAFC.js";
import "./chunks/chunk-5J434RUN.js";

// src/post.ts
await runPost();
process.exit();

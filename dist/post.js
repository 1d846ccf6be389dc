import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  runPost
} from "./chunks/chunk-ZMM2XB3A.js";
import "./chunks/chunk-WP3WUWAF.js";
import "./chunks/chunk-4G2R25J7.js";

// src/post.ts
await runPost();
process.exit();

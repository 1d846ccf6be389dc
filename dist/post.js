import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  runPost
} from "./chunks/chunk-HG4SFLLI.js";
import "./chunks/chunk-XOBFZAS2.js";
import "./chunks/chunk-R3MNE3V3.js";

// src/post.ts
await runPost();
process.exit();

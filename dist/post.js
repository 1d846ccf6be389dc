import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  runPost
} from "./chunks/chunk-STCWQKLT.js";
import "./chunks/chunk-3KA26JRU.js";
import "./chunks/chunk-JPQAZDAJ.js";

// src/post.ts
await runPost();
process.exit();

import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  runPost
} from "./chunks/chunk-6HYT4ET3.js";
import "./chunks/chunk-QCEXFMZ2.js";
import "./chunks/chunk-JPQAZDAJ.js";

// src/post.ts
await runPost();
process.exit();

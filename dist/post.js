import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  runPost
} from "./chunks/chunk-AKE7FL7J.js";
import "./chunks/chunk-TFKJ5YRS.js";
import "./chunks/chunk-JPQAZDAJ.js";

// src/post.ts
await runPost();
process.exit();

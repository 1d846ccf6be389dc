import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __filename = __ryraFileURLToPath(import.meta.url);
const __dirname = __ryraDirname(__filename);
import {
  runPost
} from "./chunks/chunk-EZKTE2S4.js";
import "./chunks/chunk-AWYFBMPF.js";
import "./chunks/chunk-LHFSR3XE.js";

// src/post.ts
await runPost();
process.exit();

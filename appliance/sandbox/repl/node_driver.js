// Runs INSIDE a sandbox under the sandbox's Node.js: the warm-pool and REPL driver.
//
// Same protocol as python_driver.py: frames are a 4-byte big-endian length and JSON. The driver
// writes {"ready": true} on the result descriptor (argv[2]) and reads one frame from stdin:
// - {"op": "run", "path", "args"}: one-shot; the file runs as the main module, exactly as
//   `node path args...` would, with the rest of stdin as its stdin.
// - {"op": "repl"}: stateful; further frames on stdin are {"op": "exec", "code", "marker",
//   "timeout_ms"} cells, run in this process's global context so declarations persist. A cell's
//   final value is returned (awaited when it is a promise); synchronous code is interrupted at
//   timeout_ms. After each cell the marker goes to stdout and stderr, then a result frame.
'use strict';

const fs = require('fs');
const Module = require('module');
const util = require('util');
const vm = require('vm');

const RESULT_FD = Number(process.argv[2]);

function readExact(fd, n) {
  const buf = Buffer.alloc(n);
  let off = 0;
  while (off < n) {
    let got;
    try {
      got = fs.readSync(fd, buf, off, n - off, null);
    } catch (e) {
      if (e.code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
        continue;
      }
      throw e;
    }
    if (got === 0) throw new Error('EOF');
    off += got;
  }
  return buf;
}

function writeAll(fd, data) {
  let off = 0;
  while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
}

function writeFrame(fd, obj) {
  const body = Buffer.from(JSON.stringify(obj), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  writeAll(fd, Buffer.concat([head, body]));
}

function readFrame(fd) {
  const n = readExact(fd, 4).readUInt32BE(0);
  return JSON.parse(readExact(fd, n).toString('utf8'));
}

function runScript(req) {
  fs.closeSync(RESULT_FD);
  process.argv = [process.argv[0], req.path, ...(req.args || [])];
  Module.runMain();
}

function withTimeout(promise, ms) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Promise did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function runCell(code, count, timeoutMs) {
  let ok = true;
  let result = null;
  let interrupted = false;
  try {
    let value = vm.runInThisContext(code, { filename: `cell-${count}.js`, timeout: timeoutMs });
    if (value && typeof value.then === 'function') value = await withTimeout(value, timeoutMs);
    if (value !== undefined) {
      globalThis._ = value;
      result = util.inspect(value, { depth: 4, maxArrayLength: 200, breakLength: 120 });
    }
  } catch (e) {
    ok = false;
    interrupted = Boolean(e && /timed out|did not settle/.test(String(e.message)));
    const text = e && e.stack ? e.stack : `Uncaught ${util.inspect(e)}`;
    fs.writeSync(2, text + '\n');
  }
  return { ok, result, interrupted };
}

function repl() {
  process.chdir('/workspace');
  globalThis.require = Module.createRequire('/workspace/');
  globalThis.__dirname = '/workspace';
  globalThis.__filename = '/workspace/<repl>';
  // a cell's stray rejection or callback error is printed; it must not end the session
  process.on('unhandledRejection', (e) => fs.writeSync(2, `Unhandled rejection: ${e && e.stack ? e.stack : util.inspect(e)}\n`));
  process.on('uncaughtException', (e) => fs.writeSync(2, `Uncaught exception: ${e && e.stack ? e.stack : util.inspect(e)}\n`));
  let pending = Buffer.alloc(0);
  let busy = Promise.resolve();
  let count = 0;
  const input = fs.createReadStream(null, { fd: 0, highWaterMark: 65536 });
  input.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 4) {
      const n = pending.readUInt32BE(0);
      if (pending.length < 4 + n) break;
      const req = JSON.parse(pending.subarray(4, 4 + n).toString('utf8'));
      pending = pending.subarray(4 + n);
      if (req.op !== 'exec') process.exit(0);
      count += 1;
      const cell = count;
      busy = busy.then(async () => {
        const answer = await runCell(req.code, cell, req.timeout_ms || 10000);
        writeAll(1, Buffer.from(req.marker, 'utf8'));
        writeAll(2, Buffer.from(req.marker, 'utf8'));
        answer.maxrss_kb = process.resourceUsage().maxRSS;
        writeFrame(RESULT_FD, answer);
      });
    }
  });
  input.on('end', () => process.exit(0));
}

function main() {
  // Create the stdout and stderr stream objects now: on first use they cost a one-shot run about
  // 6 ms. (Never stdin: that would start reading the program's input.)
  void process.stdout;
  void process.stderr;
  writeFrame(RESULT_FD, { ready: true, pid: process.pid });
  const first = readFrame(0);
  if (first.op === 'run') runScript(first);
  else if (first.op === 'repl') repl();
}

main();

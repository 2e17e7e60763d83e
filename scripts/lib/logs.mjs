// Reading the logs under .run/logs (and bench/.work/logs): their tail, their size as an offset,
// and what was appended since an offset. The stack's logs are appended to by every run and, with
// the wasm component at trace level, grow by hundreds of MB per test file, past what readFileSync
// (2 GiB) or one string (V8: 512 MiB) can hold: they are read from an offset, a chunk at a time.

import fs from 'node:fs';

/** The last `lines` lines of `file` ('(no log)' when it cannot be read). */
export function tail(file, lines = 40) {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n').trimEnd();
  } catch {
    return '(no log)';
  }
}

/** Byte size of `file` (0 if absent): an offset for logSince. */
export function logSize(file) {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

/**
 * Calls `fn(text)` with the contents of `file` from byte `offset` to its end, a chunk of whole
 * lines at a time (about `chunkBytes` each); `fn` returning false stops the scan.
 */
export function forEachLogChunk(file, offset, fn, chunkBytes = 32 * 1024 * 1024) {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    let pos = Math.min(Math.max(0, offset || 0), size);
    const buf = Buffer.alloc(Math.min(chunkBytes, Math.max(1, size - pos)));
    let carry = Buffer.alloc(0);
    while (pos < size) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (n <= 0) break;
      pos += n;
      const data = carry.length ? Buffer.concat([carry, buf.subarray(0, n)]) : buf.subarray(0, n);
      const cut = pos < size ? data.lastIndexOf(10) + 1 : data.length; // up to the last newline
      carry = Buffer.from(data.subarray(cut)); // a copy: `buf` is reused
      if (cut > 0 && fn(data.subarray(0, cut).toString('utf8')) === false) return;
    }
    if (carry.length) fn(carry.toString('utf8'));
  } finally {
    fs.closeSync(fd);
  }
}

/** Text of a (small) log `file` from byte `offset` to its end. */
export function logSince(file, offset = 0) {
  const parts = [];
  forEachLogChunk(file, offset, (t) => { parts.push(t); });
  return parts.join('');
}

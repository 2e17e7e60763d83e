#!/usr/bin/env node
// Checks every relative link of README.md and docs/*.md: the file must exist and, with a
// `#fragment`, the target Markdown file must have a heading with that anchor (GitHub's rule:
// lower case, punctuation dropped, spaces to hyphens, `-1`, `-2`... for repeats).
// Prints one line per link checked and exits 1 if any is broken. No npm dependencies.
//
//   node scripts/check-doc-links.mjs

import fs from 'node:fs';
import path from 'node:path';

import { ROOT } from './lib/paths.mjs';

const files = ['README.md', ...fs.readdirSync(path.join(ROOT, 'docs'))
  .filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];

/** Markdown text without fenced code blocks and inline code spans. */
function prose(text) {
  return text.replace(/^```[\s\S]*?^```/gm, '').replace(/``[^`]*``|`[^`\n]*`/g, '');
}

/** The anchors of a Markdown file's headings. */
function anchors(file) {
  const seen = new Map();
  const out = new Set();
  const text = fs.readFileSync(file, 'utf8').replace(/^```[\s\S]*?^```/gm, '');
  for (const m of text.matchAll(/^#{1,6}\s+(.*?)\s*#*\s*$/gm)) {
    const base = m[1].toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').trim().replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

let checked = 0;
const broken = [];
for (const f of files) {
  const text = prose(fs.readFileSync(path.join(ROOT, f), 'utf8'));
  for (const m of text.matchAll(/!?\[[^\]]*\]\(([^)\s]+)\)/g)) {
    const target = m[1];
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto: ...
    const [p, frag] = target.split('#');
    const abs = p ? path.resolve(path.dirname(path.join(ROOT, f)), p) : path.join(ROOT, f);
    checked += 1;
    let why = '';
    if (!fs.existsSync(abs)) why = 'no such file';
    else if (frag !== undefined) {
      if (!abs.endsWith('.md')) why = 'anchor into a non-Markdown file';
      else if (!anchors(abs).has(frag)) why = `no heading with anchor #${frag}`;
    }
    console.log(`${why ? 'BROKEN' : 'ok    '} ${f}: ${target}${why ? ` (${why})` : ''}`);
    if (why) broken.push(`${f}: ${target}`);
  }
}
console.log(`${checked} relative links in ${files.length} files, ${broken.length} broken`);
process.exit(broken.length ? 1 : 0);

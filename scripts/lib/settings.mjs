// bffgate's filter settings as JSON objects (what `bffgate-config json` prints and `render`
// takes): laying one set of settings over another.

function isObj(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * Deep merge like `bffgate-config render --overlay`: objects merge key by key, anything else
 * (arrays too) replaces. A null value deletes the key, or with keepNull stays null (for
 * combining two sets of overrides, or settings where null means something).
 */
export function mergeSettings(base, over, { keepNull = false } = {}) {
  const out = isObj(base) ? { ...base } : {};
  for (const [k, v] of Object.entries(over || {})) {
    if (v === null && !keepNull) delete out[k];
    else if (isObj(v) && isObj(out[k])) out[k] = mergeSettings(out[k], v, { keepNull });
    else out[k] = v;
  }
  return out;
}

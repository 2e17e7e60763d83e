// bffgate demo page. No framework, no inline script (the page is served with a strict CSP),
// nothing kept in localStorage or sessionStorage: the session lives in an HttpOnly cookie that
// this script never sees.
//
// Stable element ids (for people and for browser tests):
//   #status        "Signed in as <name or sub>" / "Not signed in" / an error
//   #expiry        session expiry (shown when signed in)
//   #signin        button: navigates to /auth/login?return_to=/
//   #signout       button: POST /auth/logout (X-CSRF: 1), then the provider's end_session_url
//   #orders        result of GET /api/orders (list or error)
//   #profile       result of GET /api/profile (profile or error)
//   #create-order  button: POST /api/orders (X-CSRF: 1, JSON body)
//   #message       outcome of the last action, e.g. "403 insufficient_scope: ..."
//                  (class "error" on failures)
//   #public        result of GET /api/public/hello
//   #apis          section holding #orders, #profile and #create-order (hidden when signed out)
//   #level         the sign-in level of the session (acr) and when the sign-in was made
//   #export-orders button: GET /api/orders/export (a route that needs step-up)
//   #export        its result, or "Step-up required: ..." when bffgate answers
//                  401 insufficient_user_authentication
//   #stepup        button shown then: a step-up login (the answer's acr_values and max_age) that
//                  comes back to /?then=export and runs the export again

'use strict';

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function showMessage(text, isError) {
  const m = $('message');
  m.textContent = text;
  m.className = isError ? 'error' : '';
  m.hidden = false;
}

// fetch + JSON, never throws: {status, body} (body null if not JSON), status 0 on network errors
async function call(method, url, { headers = {}, body } = {}) {
  try {
    const res = await fetch(url, {
      method,
      credentials: 'same-origin',
      cache: 'no-store',
      redirect: 'manual',
      headers: { Accept: 'application/json', ...headers },
      body,
    });
    let json = null;
    try {
      json = await res.json();
    } catch {
      json = null;
    }
    return { status: res.status, body: json };
  } catch (err) {
    return { status: 0, body: { error: 'network_error', error_description: String(err) } };
  }
}

function errorText(r) {
  if (r.status === 0 && r.body === null) return 'request was redirected';
  const code = r.body?.error || 'error';
  const desc = r.body?.error_description ? `: ${r.body.error_description}` : '';
  return `${r.status || 'network'} ${code}${desc}`;
}

// what the API saw, without ever printing the token itself
function seenSummary(seen) {
  if (!seen) return '';
  const c = seen.claims;
  const auth = seen.authorization ? `${seen.authorization.split(' ')[0]} …` : 'none';
  const parts = [`Authorization: ${auth}`, `cookie: ${seen.cookie === null ? 'none' : 'present'}`];
  if (c) parts.push(`aud: ${Array.isArray(c.aud) ? c.aud.join(' ') : c.aud}`, `scope: ${c.scope || ''}`);
  return `API saw — ${parts.join(' · ')}`;
}

function renderError(node, r) {
  clear(node);
  node.appendChild(el('p', errorText(r), 'error'));
  const s = seenSummary(r.body?.seen);
  if (s) node.appendChild(el('p', s, 'meta'));
}

async function loadOrders() {
  const node = $('orders');
  const r = await call('GET', '/api/orders');
  if (r.status !== 200 || !r.body) return renderError(node, r);
  clear(node);
  const list = r.body.orders || [];
  if (list.length === 0) {
    node.appendChild(el('p', 'No orders yet.'));
  } else {
    const ul = el('ul');
    for (const o of list) ul.appendChild(el('li', `${o.item} (${o.created_at})`));
    node.appendChild(ul);
  }
  node.appendChild(el('p', seenSummary(r.body.seen), 'meta'));
  return undefined;
}

async function loadProfile() {
  const node = $('profile');
  const r = await call('GET', '/api/profile');
  if (r.status !== 200 || !r.body) return renderError(node, r);
  clear(node);
  const p = r.body.profile || {};
  const dl = el('ul');
  for (const k of ['sub', 'name', 'preferred_username', 'email']) {
    if (p[k] !== undefined) dl.appendChild(el('li', `${k}: ${p[k]}`));
  }
  node.appendChild(dl);
  node.appendChild(el('p', seenSummary(r.body.seen), 'meta'));
  return undefined;
}

async function loadPublic() {
  const node = $('public');
  const r = await call('GET', '/api/public/hello');
  if (r.status !== 200 || !r.body) return renderError(node, r);
  clear(node);
  node.appendChild(el('p', `message: ${r.body.message}`));
  node.appendChild(el('p', seenSummary(r.body.seen), 'meta'));
  return undefined;
}

let stepUp = null;

async function exportOrders() {
  const node = $('export');
  clear(node);
  const r = await call('GET', '/api/orders/export');
  if (r.status === 200 && r.body?.export) {
    node.appendChild(el('p', `Exported ${r.body.export.count} order(s)`, 'ok'));
    $('stepup').hidden = true;
    return;
  }
  if (r.status === 401 && r.body?.error === 'insufficient_user_authentication') {
    stepUp = r.body;
    const what = [r.body.acr_values && `sign-in level ${r.body.acr_values}`,
      Number.isInteger(r.body.max_age) && `made in the last ${r.body.max_age} s`].filter(Boolean).join(', ');
    node.appendChild(el('p', `Step-up required: ${what || 'a new sign-in'}`, 'error'));
    $('stepup').hidden = false;
    return;
  }
  renderError(node, r);
}

// The step-up login: the parameters bffgate named, back to this page, which then exports.
function doStepUp() {
  const q = new URLSearchParams({ return_to: '/?then=export' });
  if (typeof stepUp?.acr_values === 'string') q.set('acr_values', stepUp.acr_values);
  if (Number.isInteger(stepUp?.max_age)) q.set('max_age', String(stepUp.max_age));
  window.location.assign(`/auth/login?${q}`);
}

let orderCounter = 0;
async function createOrder() {
  const button = $('create-order');
  button.disabled = true;
  orderCounter += 1;
  const item = `Demo item ${orderCounter} at ${new Date().toLocaleTimeString()}`;
  const r = await call('POST', '/api/orders', {
    headers: { 'X-CSRF': '1', 'Content-Type': 'application/json' },
    body: JSON.stringify({ item }),
  });
  button.disabled = false;
  if (r.status === 201 && r.body?.order) {
    showMessage(`Order created: ${r.body.order.item}`, false);
  } else {
    showMessage(`Create order failed: ${errorText(r)}`, true);
  }
  await loadOrders();
}

async function signOut() {
  $('signout').disabled = true;
  const r = await call('POST', '/auth/logout', { headers: { 'X-CSRF': '1' } });
  if (r.status === 200) {
    const url = r.body?.end_session_url;
    if (typeof url === 'string' && /^https?:\/\//.test(url)) {
      window.location.assign(url);
    } else {
      window.location.reload();
    }
    return;
  }
  $('signout').disabled = false;
  showMessage(`Sign out failed: ${errorText(r)}`, true);
}

function signIn() {
  window.location.assign('/auth/login?return_to=/');
}

async function init() {
  $('signin').addEventListener('click', signIn);
  $('signout').addEventListener('click', signOut);
  $('create-order').addEventListener('click', createOrder);
  $('export-orders').addEventListener('click', exportOrders);
  $('stepup').addEventListener('click', doStepUp);
  loadPublic();

  const r = await call('GET', '/auth/user');
  if (r.status === 200 && r.body) {
    const u = r.body;
    const name = u.claims?.name || u.claims?.preferred_username || u.sub;
    $('status').textContent = `Signed in as ${name}`;
    if (typeof u.expires_at === 'number') {
      const exp = $('expiry');
      exp.textContent = `Session expires ${new Date(u.expires_at * 1000).toLocaleString()}`;
      exp.hidden = false;
    }
    if (typeof u.acr === 'string') {
      const when = typeof u.auth_time === 'number' ? `, signed in ${new Date(u.auth_time * 1000).toLocaleTimeString()}` : '';
      $('level').textContent = `Sign-in level: ${u.acr}${when}`;
      $('level').hidden = false;
    }
    $('signout').hidden = false;
    $('apis').hidden = false;
    await Promise.all([loadOrders(), loadProfile()]);
    if (new URLSearchParams(window.location.search).get('then') === 'export') await exportOrders();
  } else if (r.status === 401) {
    $('status').textContent = 'Not signed in';
    $('signin').hidden = false;
  } else {
    $('status').textContent = `Could not load the session: ${errorText(r)}`;
    $('status').className = 'error';
    $('signin').hidden = false;
  }
}

document.addEventListener('DOMContentLoaded', init);

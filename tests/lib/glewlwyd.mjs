// Browser-side steps at Glewlwyd (scripts/provider2.mjs), done the way its login page does them.
//
// Glewlwyd's login page (login.html) is a single-page app over a JSON API, so there is no HTML
// form to submit. From an authorization request it goes:
//   GET  /api/oidc/auth?...          302 to login.html?...&callback_url=<the authorization URL>
//   POST /api/auth {username,password}  (the page's XHR) sets the session cookie GLEWLWYD2_SESSION_ID
//   GET  <callback_url>&g_continue   (the page's "Continue" button) 302 to redirect_uri?code&state&iss
// Consent is pre-granted in demo/glewlwyd/seed.sql. Without `g_continue` Glewlwyd always shows
// the login page, even to a signed-in user. RP-initiated logout goes:
//   GET    /api/oidc/end_session?id_token_hint&post_logout_redirect_uri&state
//          302 to login.html?prompt=end_session&sid&client_id&post_redirect_to&callback_url
//   GET    /api/oidc/session/<sid>/<client_id>?post_redirect_to=...   (front-channel clients)
//   DELETE /api/oidc/session/<sid>   (back-channel logout, tokens of the session disabled)
//   DELETE /api/auth/                (the provider's own session)
//   then the page navigates to callback_url (post_logout_redirect_uri?state=...).

const JSON_XHR = { accept: 'application/json', 'sec-fetch-mode': 'cors', 'sec-fetch-site': 'same-origin' };

/** `${status} ${url} -> location` lines for error messages (no bodies, no cookies). */
function hop(r) {
  return `${r.status} ${r.url.replace(/([?&](code|id_token_hint)=)[^&]+/g, '$1<redacted>')}${r.location ? ' -> (redirect)' : ''}`;
}

/**
 * From the authorization URL to the redirect to the client's redirect_uri, signing in as
 * `user` when the login page is shown.
 * @param {import('./client.mjs').Browser} browser
 * @returns {Promise<URL>} where the provider sent the browser (redirect_uri?code=...&state=...&iss=...,
 *   or redirect_uri?error=...)
 */
export async function authorizeAtGlewlwyd(browser, authorizeUrl, user, password, { redirectUri, maxHops = 6 } = {}) {
  const origin = new URL(authorizeUrl).origin;
  const trail = [];
  let r = await browser.navigate(authorizeUrl);
  let signedIn = false;
  for (let i = 0; i < maxHops; i += 1) {
    trail.push(hop(r));
    if (r.status < 300 || r.status >= 400 || !r.location) break;
    const next = new URL(r.location, r.url);
    if (next.origin !== origin || (redirectUri && next.href.startsWith(redirectUri))) return next;
    if (next.pathname.endsWith('/login.html')) {
      const callback = next.searchParams.get('callback_url');
      if (!callback || new URL(callback).origin !== origin) throw new Error(`login page without a callback_url on ${origin}:\n${trail.join('\n')}`);
      if (signedIn) throw new Error(`login page again after signing in:\n${trail.join('\n')}`);
      const page = await browser.navigate(next.href);
      trail.push(hop(page));
      if (page.status !== 200) throw new Error(`login page answered ${page.status}:\n${trail.join('\n')}`);
      const auth = await browser.request('POST', `${origin}/api/auth/`, {
        json: { username: user, password },
        headers: { ...JSON_XHR, origin },
      });
      trail.push(hop(auth));
      if (auth.status !== 200) throw new Error(`POST /api/auth as ${user}: ${auth.status}:\n${trail.join('\n')}`);
      signedIn = true;
      r = await browser.navigate(`${callback}${callback.includes('?') ? '&' : '?'}g_continue`);
      continue;
    }
    r = await browser.navigate(next.href);
  }
  throw new Error(`no redirect back to the client:\n${trail.join('\n')}`);
}

/**
 * RP-initiated logout at Glewlwyd, confirmed as the login page confirms it.
 * @returns {Promise<{endSession: object, params: URLSearchParams, sessionList: object, deleted: object, landing: URL|undefined}>}
 *   landing: where the page sends the browser (post_logout_redirect_uri?state=...), when it does
 */
export async function logoutAtGlewlwyd(browser, endSessionUrl) {
  const origin = new URL(endSessionUrl).origin;
  const endSession = await browser.navigate(endSessionUrl);
  if (endSession.status !== 302 || !endSession.location) {
    throw new Error(`end_session: expected 302 to the login page, got ${hop(endSession)}`);
  }
  const page = new URL(endSession.location, endSession.url);
  const params = page.searchParams;
  const sid = params.get('sid');
  const plugin = params.get('plugin');
  const clientId = params.get('client_id');
  if (params.get('prompt') !== 'end_session' || !sid || !plugin || !clientId) {
    throw new Error(`end_session: unexpected login page parameters (prompt=${params.get('prompt')})`);
  }
  const post = params.get('post_redirect_to');
  const list = await browser.request('GET',
    `${origin}/api/${plugin}/session/${encodeURIComponent(sid)}/${encodeURIComponent(clientId)}${post ? `?post_redirect_to=${encodeURIComponent(post)}` : ''}`,
    { headers: JSON_XHR });
  if (list.status !== 200) throw new Error(`session list: ${hop(list)}`);
  const deleted = await browser.request('DELETE', `${origin}/api/${plugin}/session/${encodeURIComponent(sid)}`, { headers: { ...JSON_XHR, origin } });
  const signOut = await browser.request('DELETE', `${origin}/api/auth/`, { headers: { ...JSON_XHR, origin } });
  if (signOut.status !== 200) throw new Error(`DELETE /api/auth/: ${hop(signOut)}`);
  const callback = params.get('callback_url');
  return { endSession, params, sessionList: list.json, deleted, landing: list.json?.post_redirect_to && callback ? new URL(callback) : undefined };
}

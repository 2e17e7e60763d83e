-- Demo data for Glewlwyd 2.7, applied by scripts/provider2.mjs after the package's own schema
-- (/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3) to a fresh SQLite database at every
-- start. A template: each placeholder such as ${REDIRECT_URI} is replaced by an SQL-escaped
-- value. Password hashes are computed at start in the format of Glewlwyd's database modules on
-- SQLite:
-- base64(PBKDF2-HMAC-SHA256(password, salt, iterations, 32 bytes) || salt) "," iterations,
-- with a random 16-character salt.

-- No administrator: the schema's default admin/password account is removed. Everything the
-- provider needs is configured here.
DELETE FROM g_user_scope_user WHERE gu_id IN (SELECT gu_id FROM g_user WHERE gu_username = 'admin');
DELETE FROM g_user_password WHERE gu_id IN (SELECT gu_id FROM g_user WHERE gu_username = 'admin');
DELETE FROM g_user WHERE gu_username = 'admin';

-- Scopes. A scope whose password is required is only granted to a session that signed in with
-- the user's password (max age 0: no re-authentication); `openid` comes from the schema.
UPDATE g_scope SET gs_password_required = 1 WHERE gs_name = 'openid';
INSERT INTO g_scope (gs_name, gs_display_name, gs_description, gs_password_required, gs_password_max_age) VALUES
  ('profile', 'Profile', 'Name and user name', 1, 0),
  ('email', 'E-mail', 'E-mail address', 1, 0),
  ('offline_access', 'Offline access', 'Refresh tokens', 1, 0),
  ('orders:read', 'Read orders', 'Demo orders API, read', 1, 0),
  ('orders:write', 'Write orders', 'Demo orders API, write', 1, 0);

-- Users of the `database` user module: alice/alice and bob/bob, as at the demo provider.
INSERT INTO g_user (gu_username, gu_name, gu_email, gu_enabled) VALUES
  ('alice', 'Alice Demo', 'alice@example.test', 1),
  ('bob', 'Bob Demo', 'bob@example.test', 1);
INSERT INTO g_user_password (gu_id, guw_password) VALUES
  ((SELECT gu_id FROM g_user WHERE gu_username = 'alice'), '${ALICE_PASSWORD_HASH}'),
  ((SELECT gu_id FROM g_user WHERE gu_username = 'bob'), '${BOB_PASSWORD_HASH}');
-- Scopes each user may hold (alice: orders:read orders:write profile; bob: orders:read profile).
INSERT INTO g_user_scope (gus_name) VALUES
  ('openid'), ('profile'), ('email'), ('offline_access'), ('orders:read'), ('orders:write');
INSERT INTO g_user_scope_user (gu_id, gus_id)
  SELECT u.gu_id, s.gus_id FROM g_user u, g_user_scope s
  WHERE u.gu_username = 'alice'
     OR (u.gu_username = 'bob' AND s.gus_name <> 'orders:write');

-- The end-session endpoint checks post_logout_redirect_uri against the client property
-- `post_logout_redirect_uris` (plural, a list), but the schema's client module only declares the
-- singular `post_logout_redirect_uri`: declare the list so RP-initiated logout can redirect back.
UPDATE g_client_module_instance
  SET gcmi_parameters = json_set(gcmi_parameters, '$.data-format.post_logout_redirect_uris',
                                 json('{"multiple":true,"read":true,"write":true}'))
  WHERE gcmi_name = 'database';

-- The confidential client `bffgate`. Its secret is stored hashed (gc_password, "client password"
-- in Glewlwyd's terms), never as the plain `client_secret` property.
INSERT INTO g_client (gc_client_id, gc_name, gc_description, gc_confidential, gc_password, gc_enabled) VALUES
  ('bffgate', 'bffgate', 'bffgate Backend-for-Frontend', 1, '${CLIENT_PASSWORD_HASH}', 1);
INSERT INTO g_client_property (gc_id, gcp_name, gcp_value)
  SELECT gc_id, p.name, p.value FROM g_client, (
    SELECT 'redirect_uri' AS name, '${REDIRECT_URI}' AS value
    -- The grants bffgate uses. (OIDC.md says /introspect and /revoke with the client's own
    -- credentials need `client_credentials` too: measured with 2.7.5, they do not.)
    UNION ALL SELECT 'authorization_type', 'code'
    UNION ALL SELECT 'authorization_type', 'refresh_token'
    UNION ALL SELECT 'token_endpoint_auth_method', 'client_secret_basic'
    UNION ALL SELECT 'token_endpoint_auth_method', 'client_secret_post'
    UNION ALL SELECT 'post_logout_redirect_uris', '${POST_LOGOUT_REDIRECT_URI}'
    UNION ALL SELECT 'backchannel_logout_uri', '${BACKCHANNEL_LOGOUT_URI}'
    UNION ALL SELECT 'backchannel_logout_session_required', '1'
    UNION ALL SELECT 'resource', 'https://orders.api.local'
    UNION ALL SELECT 'resource', 'https://profile.api.local'
  ) AS p
  WHERE gc_client_id = 'bffgate' AND p.value <> '';

-- Consent, given once per user as the login page's grant step would (PUT /api/auth/grant/bffgate):
-- signing in is then a single password POST, as at the demo provider.
INSERT INTO g_client_user_scope (gs_id, gcus_username, gcus_client_id, gcus_enabled)
  SELECT s.gs_id, u.gu_username, 'bffgate', 1 FROM g_scope s, g_user u
  WHERE s.gs_name IN ('openid', 'profile', 'email', 'offline_access', 'orders:read', 'orders:write');

-- Subject identifiers: `sub` is the user name, as at the demo provider. Without these rows the
-- plugin makes up a random 32-character `sub` per user at first login (a new one every start, as
-- the database is fresh).
INSERT INTO gpo_subject_identifier (gposi_plugin_name, gposi_username, gposi_client_id, gposi_sector_identifier_uri, gposi_sub) VALUES
  ('oidc', 'alice', NULL, NULL, 'alice'),
  ('oidc', 'bob', NULL, NULL, 'bob');

-- The OpenID Connect plugin instance (parameters: demo/glewlwyd/oidc-plugin.json).
INSERT INTO g_plugin_module_instance (gpmi_module, gpmi_name, gpmi_display_name, gpmi_parameters, gpmi_enabled) VALUES
  ('oidc', 'oidc', 'OpenID Connect', '${OIDC_PLUGIN_PARAMETERS}', 1);

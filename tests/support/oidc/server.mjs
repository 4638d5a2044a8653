// A real OpenID Connect provider (npm oidc-provider) for cargohold's tests, on loopback only.
//
//   node server.mjs PORT CONFIG.json
//
// Listens on 127.0.0.1:PORT with issuer http://127.0.0.1:PORT. CONFIG.json holds
//
//   {"clients":  [{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."],
//                  "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post",
//                  ...any other client metadata}],
//    "accounts": [{"sub": "...", "username": "...", "password": "...", "email": "...",
//                  "email_verified": true, "groups": ["..."], "name": "..."}]}
//
// The file is read again on every client or account lookup, so a test can add clients and
// accounts to a running provider by rewriting it (atomically: write a temporary file and rename).
//
// Interactions (no browser needed; tests/support/oidc_provider.py drives them with httpx):
//   GET  /interaction/:uid          login prompt: an HTML form (id "login") with fields `login` and
//                                   `password`; consent prompt: granted at once (303 onwards)
//   POST /interaction/:uid/login    right password: 303 back to the authorization endpoint, which goes
//                                   through the (automatic) consent prompt and then redirects to the
//                                   client's redirect_uri with a code; wrong password: the form again,
//                                   status 401
//   GET  /interaction/:uid/abort    the user cancels: redirect_uri gets error=access_denied
// RP-initiated logout (end_session_endpoint) shows a form (id "op.logoutForm") to POST with logout=yes.
import { randomBytes, generateKeyPairSync, timingSafeEqual, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const [portArg, configPath] = process.argv.slice(2);
const port = Number.parseInt(portArg ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535 || !configPath) {
  console.error('usage: node server.mjs PORT CONFIG.json');
  process.exit(2);
}
const HOST = '127.0.0.1';
const issuer = `http://${HOST}:${port}`;

function readConfig() {
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  return { clients: config.clients ?? [], accounts: config.accounts ?? [] };
}
readConfig(); // fail fast on a missing or malformed file

function usernameOf(account) {
  return account.username ?? account.preferred_username ?? account.sub;
}

function findAccountBySub(sub) {
  return readConfig().accounts.find((account) => account.sub === sub);
}

function findAccountByLogin(login) {
  return readConfig().accounts.find((account) => usernameOf(account) === login);
}

function passwordMatches(account, password) {
  const digest = (value) => createHash('sha256').update(String(value)).digest();
  return typeof account.password === 'string' && timingSafeEqual(digest(account.password), digest(password));
}

function clientMetadata(client) {
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...client,
  };
}

// Storage: everything in memory, except clients, which come from the config file.
const store = new Map(); // key -> { payload, expiresAt }
const grantMembers = new Map(); // grantId -> Set of keys

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    if (this.model === 'Client') throw new Error('clients are read from the config file');
    const key = this.key(id);
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : undefined;
    store.set(key, { payload, expiresAt });
    if (payload.uid) store.set(`sessionUid:${payload.uid}`, { payload: id, expiresAt });
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    if (this.model === 'Client') {
      const client = readConfig().clients.find((c) => c.client_id === id);
      return client ? clientMetadata(client) : undefined;
    }
    return live(this.key(id))?.payload;
  }

  async findByUid(uid) {
    const id = live(`sessionUid:${uid}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = live(`userCode:${userCode}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = live(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

function html(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>
`;
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients: [],
  jwks: { keys: [signingKey] },
  cookies: {
    keys: [randomBytes(32).toString('hex')],
    names: { session: 'oidc_session', interaction: 'oidc_interaction', resume: 'oidc_resume' },
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Put the scope-granted claims in the ID token too, not only in userinfo.
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 accepts
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async () => true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.type = 'html';
        ctx.body = html('Sign out', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.type = 'html';
        ctx.body = html('Signed out', '<p id="signed-out">You are signed out.</p>');
      },
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = html('Error', `<p id="error">${escapeHtml(out.error)}</p>
<p id="error_description">${escapeHtml(out.error_description ?? '')}</p>`);
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  async findAccount(ctx, sub) {
    const account = findAccountBySub(sub);
    if (!account) return undefined;
    return {
      accountId: account.sub,
      async claims() {
        const claims = {
          sub: account.sub,
          preferred_username: account.preferred_username ?? usernameOf(account),
          groups: account.groups ?? [],
        };
        if (account.name !== undefined) claims.name = account.name;
        if (account.email !== undefined) {
          claims.email = account.email;
          claims.email_verified = account.email_verified ?? true;
        }
        return claims;
      },
    };
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 600,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 86400,
    Session: 86400,
    Grant: 86400,
  },
});

// Consent is automatic: grant whatever the provider says is missing.
async function grantEverythingRequested(details) {
  const { params, prompt, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return details.grantId ? {} : { grantId };
}

function loginForm(uid, clientId, { login = '', error } = {}) {
  const message = error ? `<p id="error">${escapeHtml(error)}</p>\n` : '';
  return html('Sign in', `<p>to continue to ${escapeHtml(clientId)}</p>
${message}<form id="login" method="post" action="/interaction/${escapeHtml(uid)}/login">
<input name="login" autocomplete="username" value="${escapeHtml(login)}">
<input name="password" type="password" autocomplete="current-password">
<button type="submit">Sign in</button>
</form>
<a id="abort" href="/interaction/${escapeHtml(uid)}/abort">Cancel</a>`);
}

function send(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction mismatch');
  const { prompt, params } = details;

  if (action === 'abort' && req.method === 'GET') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (action === undefined && req.method === 'GET') {
    if (prompt.name === 'login') {
      return send(res, 200, loginForm(uid, params.client_id));
    }
    if (prompt.name === 'consent') {
      const consent = await grantEverythingRequested(details);
      return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    }
    return send(res, 400, html('Error', `<p id="error">unsupported prompt ${escapeHtml(prompt.name)}</p>`));
  }

  if (action === 'login' && req.method === 'POST') {
    if (prompt.name !== 'login') {
      return send(res, 400, html('Error', '<p id="error">no login pending</p>'));
    }
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const account = findAccountByLogin(login);
    if (!account || !passwordMatches(account, form.get('password') ?? '')) {
      console.log(`login failed for ${JSON.stringify(login)}`);
      return send(res, 401, loginForm(uid, params.client_id, { login, error: 'Invalid username or password.' }));
    }
    console.log(`login ok for ${JSON.stringify(login)} (sub ${account.sub})`);
    // Login only: the provider then asks for consent, which GET /interaction/:uid grants at once.
    return provider.interactionFinished(req, res, {
      login: { accountId: account.sub },
    }, { mergeWithLastSubmission: false });
  }

  return send(res, 405, html('Error', '<p id="error">method not allowed</p>'));
}

const providerCallback = provider.callback();
const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/;

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url ?? '/', issuer);
  const match = INTERACTION.exec(pathname);
  if (!match) {
    providerCallback(req, res);
    return;
  }
  interaction(req, res, match[1], match[2]).catch((err) => {
    const status = err instanceof errors.OIDCProviderError ? err.statusCode : 500;
    if (status >= 500) console.error(err);
    if (!res.headersSent) {
      send(res, status, html('Error', `<p id="error">${escapeHtml(err.message)}</p>
<p id="error_description">${escapeHtml(err.error_description ?? '')}</p>`));
    } else {
      res.end();
    }
  });
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));

server.on('error', (err) => {
  console.error(`oidc-provider test server: ${err.message}`);
  process.exit(1);
});

server.listen(port, HOST, () => {
  console.log(`oidc-provider ${issuer} listening`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// Should the test process die without stopping us (SIGKILL), we are re-parented: end too.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) shutdown();
}, 500).unref();

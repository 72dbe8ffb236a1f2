// A real OAuth 2.0 authorization server for tokenhook's introspection tests: node-oidc-provider
// (a certified OpenID provider) with client credentials, opaque access tokens, token
// introspection (RFC 7662) and revocation (RFC 7009), served over HTTPS on 127.0.0.1.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json (written by tests/it/support/oidc_provider.rs):
//   cert_file, key_file   PEM server certificate (SAN 127.0.0.1) and key
//   port                  0 for any free port; a restart passes the port it had
//   state_file            JSON file holding the signing key and every token, so that a
//                         restarted provider still knows the tokens it issued
//   access_token_ttl      seconds (default 3600)
//   scopes                scopes clients may ask for (besides openid, offline_access)
//   clients               client metadata (RFC 7591 names), e.g. token_endpoint_auth_method
//                         client_secret_basic | client_secret_post | private_key_jwt (+ jwks)
//   token_claims          { client_id: { member: value } }: extra members of that client's
//                         access tokens, returned by introspection (e.g. sub, groups)
//
// Prints one line to stdout once it listens: {"issuer":"https://127.0.0.1:PORT","port":PORT}.
// GET /peer/stats answers {"introspections":N,"revocations":N,"tokens":N}: POST requests to
// those endpoints since start (not a provider endpoint; the tests count upstream calls with it).
// Never logs a token or a secret.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import process from 'node:process';

import Provider from 'oidc-provider';

// stdout carries only the line that says where we listen; the provider's notices go to stderr.
console.info = console.error;
console.log = console.error;

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// ---- state: the provider's own key and its models, kept in one JSON file -------------------

const state = config.state_file && existsSync(config.state_file)
  ? JSON.parse(readFileSync(config.state_file, 'utf8'))
  : { jwks: null, cookie_key: null, models: {} };

function save() {
  if (!config.state_file) return;
  const tmp = `${config.state_file}.tmp`;
  writeFileSync(tmp, JSON.stringify(state));
  renameSync(tmp, config.state_file);
}

if (!state.jwks) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  state.jwks = { keys: [{ ...jwk, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' }] };
  state.cookie_key = randomBytes(32).toString('hex');
  save();
}

const now = () => Math.floor(Date.now() / 1000);

// node-oidc-provider's adapter interface over `state.models`, persisted on every write.
class FileAdapter {
  constructor(name) {
    this.name = name;
  }

  key(id) {
    return `${this.name}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    state.models[this.key(id)] = { payload, exp: expiresIn ? now() + expiresIn : null };
    save();
  }

  async find(id) {
    const entry = state.models[this.key(id)];
    if (!entry) return undefined;
    if (entry.exp !== null && entry.exp <= now()) {
      delete state.models[this.key(id)];
      save();
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const hit = Object.entries(state.models)
      .find(([k, v]) => k.startsWith(`${this.name}:`) && v.payload.uid === uid);
    return hit ? this.find(hit[0].slice(this.name.length + 1)) : undefined;
  }

  async findByUserCode(userCode) {
    const hit = Object.entries(state.models)
      .find(([k, v]) => k.startsWith(`${this.name}:`) && v.payload.userCode === userCode);
    return hit ? this.find(hit[0].slice(this.name.length + 1)) : undefined;
  }

  async consume(id) {
    const entry = state.models[this.key(id)];
    if (entry) {
      entry.payload.consumed = now();
      save();
    }
  }

  async destroy(id) {
    delete state.models[this.key(id)];
    save();
  }

  async revokeByGrantId(grantId) {
    for (const [k, v] of Object.entries(state.models)) {
      if (v.payload.grantId === grantId) delete state.models[k];
    }
    save();
  }
}

// ---- the server: listen first, so that the issuer can name the port -----------------------

let handler = (req, res) => {
  res.statusCode = 503;
  res.end();
};
const stats = { introspections: 0, revocations: 0, tokens: 0 };

const server = createServer({
  cert: readFileSync(config.cert_file),
  key: readFileSync(config.key_file),
}, (req, res) => {
  // The request target may be in absolute form (https://host/path), as some clients send.
  const { pathname: path } = new URL(req.url, 'https://127.0.0.1');
  if (req.method === 'GET' && path === '/peer/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(stats));
    return;
  }
  if (req.method === 'POST') {
    if (path === '/token/introspection') stats.introspections += 1;
    else if (path === '/token/revocation') stats.revocations += 1;
    else if (path === '/token') stats.tokens += 1;
  }
  handler(req, res);
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port || 0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `https://127.0.0.1:${port}`;

const ttl = config.access_token_ttl ?? 3600;
const tokenClaims = config.token_claims ?? {};

const provider = new Provider(issuer, {
  adapter: FileAdapter,
  jwks: state.jwks,
  cookies: { keys: [state.cookie_key] },
  clients: config.clients ?? [],
  scopes: ['openid', 'offline_access', ...(config.scopes ?? [])],
  ttl: {
    AccessToken: ttl,
    ClientCredentials: ttl,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // Any confidential client may introspect (tokenhook is a resource server, not the
    // client the token was issued to); a client revokes only its own tokens.
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    // Without a `resource` parameter client-credentials tokens are opaque (their format is
    // only ever chosen per resource server), which is what is introspected.
    resourceIndicators: { enabled: false },
  },
  async extraTokenClaims(ctx, token) {
    return tokenClaims[token.clientId];
  },
});

for (const event of ['server_error', 'introspection.error', 'revocation.error', 'grant.error']) {
  provider.on(event, (ctx, err) => {
    console.error(`oidc-provider ${event}: ${err.name}: ${err.message} ${err.error_description ?? ''}`);
  });
}

handler = provider.callback();

// A stopped provider is gone at once: no draining of kept-alive connections.
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);

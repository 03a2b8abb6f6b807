// A real OpenID Connect provider (panva's oidc-provider) on loopback, configured to behave like Google's OAuth 2.0
// endpoints as far as EmailMCP's Gmail feature needs. Started by tests/peers/oidc.py; not for anything but tests.
//
// Environment:
//   OIDC_PORT               port to listen on at 127.0.0.1; the issuer is http://127.0.0.1:<port>
//   OIDC_CLIENT_ID          the one (confidential) client's id
//   OIDC_CLIENT_SECRET      its secret
//   OIDC_REDIRECT_URIS      comma-separated, exact redirect URIs registered for the client
//   OIDC_ACCESS_TOKEN_TTL   access token lifetime in seconds (default 3600)
//   OIDC_ID_TOKEN_EMAIL     "0": the ID token carries sub only, the address comes from userinfo (default "1")
//
// stdout carries only machine-readable lines: exactly one `READY <issuer>` once listening, then one JSON object per
// event ({"event": ..., ...}). Everything else (oidc-provider's notices and warnings) goes to stderr.
//
// Google-like choices (all but the revocation one differ from oidc-provider's defaults):
//   - Endpoints keep oidc-provider's paths (/auth, /token, /token/revocation, /token/introspection, /me, /jwks);
//     take them from /.well-known/openid-configuration.
//   - The client authenticates with client_secret_post at the token, revocation and introspection endpoints.
//   - The authorization_code grant always issues a refresh token (Google does for access_type=offline); no
//     offline_access scope is needed, and the tokens do not end with the provider's login session.
//   - `access_type` and `include_granted_scopes` are accepted as extra authorization parameters (and ignored).
//   - The Gmail scope https://www.googleapis.com/auth/gmail.send is a plain scope of this provider: it is shown on the
//     consent page, granted with it, and listed in the token response's and introspection's `scope`.
//   - The ID token carries email and email_verified when the `email` scope is granted (as Google's does), not
//     only the userinfo response.
//   - PKCE is required for every authorization request, with S256 only; the token endpoint checks code_verifier.
//   - Refresh-token rotation is DISABLED (Google does not rotate refresh tokens): a refresh token can be used again
//     and again until it expires (14 days) or is revoked; refresh responses carry the same refresh_token back.
//   - Revoking an access token or a refresh token revokes every token of that grant (oidc-provider does this by
//     default, and so does Google).
//   - The revocation endpoint also takes requests without client authentication and with the token in the query
//     string, as https://oauth2.googleapis.com/revoke does: the registered client's credentials are filled in.
//   - Introspection of an access token includes the account's `email` (extraTokenClaims).
//   - Any login is accepted at the devInteractions login form (the password is ignored); sub is the login, email
//     is the login when it contains '@' and <login>@example.com otherwise.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import * as querystring from 'node:querystring';

// oidc-provider prints its notices with console.info (stdout); keep stdout for READY and the event lines.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider } = await import('oidc-provider');

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} must be set`);
    process.exit(2);
  }
  return value;
}

const port = Number.parseInt(required('OIDC_PORT'), 10);
const clientId = required('OIDC_CLIENT_ID');
const clientSecret = required('OIDC_CLIENT_SECRET');
const redirectUris = required('OIDC_REDIRECT_URIS').split(',').map((uri) => uri.trim()).filter(Boolean);
const accessTokenTTL = Number.parseInt(process.env.OIDC_ACCESS_TOKEN_TTL || '3600', 10);
const idTokenEmail = (process.env.OIDC_ID_TOKEN_EMAIL || '1') !== '0';
const issuer = `http://127.0.0.1:${port}`;

const GMAIL_SEND = 'https://www.googleapis.com/auth/gmail.send';

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, time: Date.now() / 1000, ...fields })}\n`);
}

function emailOf(login) {
  return login.includes('@') ? login : `${login}@example.com`;
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
      // revocation and introspection authenticate the client the same way as the token endpoint does
      revocation_endpoint_auth_method: 'client_secret_post',
      introspection_endpoint_auth_method: 'client_secret_post',
      scope: `openid email offline_access ${GMAIL_SEND}`,
    },
  ],
  responseTypes: ['code'],
  scopes: ['openid', 'email', 'offline_access', GMAIL_SEND],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
  },
  conformIdTokenClaims: !idTokenEmail,
  extraParams: ['access_type', 'include_granted_scopes'],
  pkce: {
    required: () => true,
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: { enabled: false },
    rpInitiatedLogout: { enabled: false },
    pushedAuthorizationRequests: { enabled: false },
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: emailOf(sub), email_verified: true };
      },
    };
  },
  // Stored with each access token and returned by introspection as a top-level `email` member, so that the fake
  // Gmail (tests/peers/gmail.py) knows the account's address from introspection alone.
  extraTokenClaims: async (ctx, token) => (token.accountId ? { email: emailOf(token.accountId) } : undefined),
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  rotateRefreshToken: false,
  ttl: {
    AccessToken: () => accessTokenTTL,
    AuthorizationCode: () => 600,
    IdToken: () => 3600,
    RefreshToken: () => 14 * 24 * 60 * 60,
    Interaction: () => 3600,
    Session: () => 24 * 60 * 60,
    Grant: () => 14 * 24 * 60 * 60,
  },
  cookies: {
    keys: [randomBytes(32).toString('base64url')],
  },
  // The error page as JSON-ish text, so that a test that gets stuck on it sees why.
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>oidc-provider error</title></head><body><pre>${
      Object.entries(out).map(([key, value]) => `${key}: ${String(value).replace(/[&<>"']/g, '')}`).join('\n')
    }</pre></body></html>`;
  },
});

// A barrier for the Python wrapper: GET /__test/sync?nonce=N prints {"event":"sync","nonce":N}. Event lines are
// written to the pipe synchronously before the response of the request that caused them, so once the wrapper has
// read the sync line it has read every event of the requests that were answered before it asked.
provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/__test/sync') {
    emit('sync', { nonce: String(ctx.query.nonce ?? '') });
    ctx.status = 204;
    return;
  }
  await next();
});

// Google's revoke endpoint needs no client authentication and takes the token from the query string too; fill in
// the one client's credentials when a request comes without them (see the comment at the top).
const revocationPath = new URL(provider.urlFor('revocation')).pathname;
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || ctx.path !== revocationPath) {
    await next();
    return;
  }
  let body = {};
  if (ctx.is('application/x-www-form-urlencoded') || !ctx.get('content-type')) {
    const chunks = [];
    for await (const chunk of ctx.req.iterator({ destroyOnReturn: false })) chunks.push(chunk);
    body = querystring.parse(Buffer.concat(chunks).toString('utf8'));
    // oidc-provider's form parser takes req.body once the request stream has been read
    ctx.request.header['content-type'] = 'application/x-www-form-urlencoded';
  } else {
    await next();
    return;
  }
  if (body.token === undefined && ctx.query.token !== undefined) {
    body.token = ctx.query.token;
  }
  if (body.client_id === undefined && body.client_assertion === undefined && !ctx.get('authorization')) {
    body.client_id = clientId;
    body.client_secret = clientSecret;
  }
  ctx.req.body = querystring.stringify(body);
  await next();
  if (ctx.status === 200) {
    emit('revocation.success', { token_type_hint: body.token_type_hint ?? null });
  }
});

provider.on('grant.success', (ctx) => {
  emit('grant.success', {
    grant_type: ctx.oidc.params?.grant_type ?? null,
    account: ctx.oidc.account?.accountId ?? null,
    scope: ctx.body?.scope ?? null,
    refresh_token_in_response: Boolean(ctx.body?.refresh_token),
  });
});
provider.on('grant.error', (ctx, error) => {
  emit('grant.error', {
    grant_type: ctx.oidc.params?.grant_type ?? null,
    error: error.error,
    error_description: error.error_description ?? null,
    detail: error.error_detail ?? error.cause?.message ?? null,
  });
});
provider.on('grant.revoked', (ctx, grantId) => emit('grant.revoked', { grant_id: grantId }));
provider.on('access_token.destroyed', () => emit('access_token.destroyed'));
provider.on('refresh_token.destroyed', () => emit('refresh_token.destroyed'));
for (const name of ['revocation.error', 'introspection.error', 'userinfo.error', 'authorization.error']) {
  provider.on(name, (ctx, error) => {
    emit(name, { error: error.error, error_description: error.error_description ?? null });
  });
}
provider.on('authorization.success', () => emit('authorization.success'));
provider.on('interaction.started', (ctx, prompt) => emit('interaction.started', { prompt: prompt.name }));
provider.on('server_error', (ctx, error) => {
  emit('server_error', { message: String(error?.message ?? error) });
  console.error(error);
});

const server = createServer(provider.callback());
server.on('error', (error) => {
  console.error(error);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// A CI system's OpenID Connect issuer for tests, on loopback: RSA and EC keys made with crypto.subtle,
// a discovery document, a JWKS that can rotate (and says how long to keep it), and ID tokens signed
// with any of its keys, or forged in the ways an attacker would try.

type Alg = "RS256" | "ES256";
type Key = { alg: Alg; pair: CryptoKeyPair; jwk: JsonWebKey & { kid: string } };

const b64 = (bytes: ArrayBuffer | Uint8Array | string) =>
  Buffer.from(typeof bytes === "string" ? bytes : new Uint8Array(bytes)).toString("base64url");

export type Issuer = {
  url: string; // the iss
  port: number;
  addKey: (alg: Alg) => Promise<string>; // makes a key (published at once), returns its kid
  publish: (kids: string[]) => void; // the JWKS now holds only these keys
  cacheSeconds: (s: number | null) => void; // the JWKS's Cache-Control max-age (null: no header)
  jwksFetches: () => number;
  jwks: () => { keys: JsonWebKey[] };
  sign: (claims: Record<string, unknown>, opts?: { kid?: string; header?: Record<string, unknown> }) => Promise<string>;
  /** A token whose header says alg HS256, "signed" with the issuer's public key as the HMAC secret. */
  hmacWithPublicKey: (claims: Record<string, unknown>, kid?: string) => Promise<string>;
  stop: () => void;
  start: () => void; // again, on the same port
  /** GitHub's token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL): answers {"value": token} to the right bearer. */
  githubRequest: { url: string; token: string; claims: Record<string, unknown> };
};

export async function startIssuer(): Promise<Issuer> {
  const keys = new Map<string, Key>();
  let published: string[] = [];
  let maxAge: number | null = 300;
  let fetches = 0;
  let server: ReturnType<typeof Bun.serve> | null = null;
  let port = 0;
  const url = () => `http://127.0.0.1:${port}`;
  const jwks = () => ({ keys: published.map((kid) => keys.get(kid)?.jwk as JsonWebKey) });
  const github = { url: "", token: "request-token-for-tests", claims: {} as Record<string, unknown> };

  const listen = () => {
    server = Bun.serve({
      hostname: "127.0.0.1",
      port,
      fetch: async (req) => {
        const path = new URL(req.url).pathname;
        if (path === "/.well-known/openid-configuration")
          return Response.json({
            issuer: url(),
            jwks_uri: `${url()}/keys`,
            id_token_signing_alg_values_supported: ["RS256", "ES256"],
          });
        if (path === "/keys") {
          fetches++;
          return Response.json(jwks(), { headers: maxAge === null ? {} : { "Cache-Control": `max-age=${maxAge}` } });
        }
        if (path === "/github-token") {
          if (req.headers.get("authorization") !== `Bearer ${github.token}`) return new Response("no", { status: 401 });
          const aud = new URL(req.url).searchParams.get("audience");
          const now = Math.floor(Date.now() / 1000);
          return Response.json({ value: await sign({ ...github.claims, aud, iat: now, exp: now + 300 }) });
        }
        return new Response("not found", { status: 404 });
      },
    });
    port = server.port as number;
    github.url = `${url()}/github-token?api-version=2.0`;
  };
  listen();

  async function addKey(alg: Alg): Promise<string> {
    const pair = (await crypto.subtle.generateKey(
      alg === "RS256"
        ? { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }
        : { name: "ECDSA", namedCurve: "P-256" },
      true,
      ["sign", "verify"],
    )) as CryptoKeyPair;
    const kid = `${alg.toLowerCase()}-${keys.size + 1}`;
    const { kty, n, e, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
    const jwk = { kty, n, e, crv, x, y, kid, alg, use: "sig" } as JsonWebKey & { kid: string };
    keys.set(kid, { alg, pair, jwk });
    published.push(kid);
    return kid;
  }

  async function sign(claims: Record<string, unknown>, opts: { kid?: string; header?: Record<string, unknown> } = {}) {
    const kid = opts.kid ?? published[0] ?? "";
    const key = keys.get(kid) as Key;
    const header = b64(JSON.stringify({ typ: "JWT", alg: key.alg, kid, ...opts.header }));
    const payload = b64(JSON.stringify(claims));
    const params = key.alg === "RS256" ? { name: "RSASSA-PKCS1-v1_5" } : { name: "ECDSA", hash: "SHA-256" };
    const signature = await crypto.subtle.sign(
      params,
      key.pair.privateKey,
      new TextEncoder().encode(`${header}.${payload}`),
    );
    return `${header}.${payload}.${b64(signature)}`;
  }

  async function hmacWithPublicKey(claims: Record<string, unknown>, kid = published[0] ?? "") {
    const key = keys.get(kid) as Key;
    const header = b64(JSON.stringify({ typ: "JWT", alg: "HS256", kid }));
    const payload = b64(JSON.stringify(claims));
    const secret = new TextEncoder().encode(JSON.stringify(key.jwk));
    const mac = await crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const signature = await crypto.subtle.sign("HMAC", mac, new TextEncoder().encode(`${header}.${payload}`));
    return `${header}.${payload}.${b64(signature)}`;
  }

  return {
    get url() {
      return url();
    },
    get port() {
      return port;
    },
    addKey,
    publish: (kids) => {
      published = [...kids];
    },
    cacheSeconds: (s) => {
      maxAge = s;
    },
    jwksFetches: () => fetches,
    jwks,
    sign,
    hmacWithPublicKey,
    stop: () => server?.stop(true),
    start: listen,
    githubRequest: github,
  };
}

// Verifies real deliveries three ways, as receivers on different runtimes would:
//   1. node:crypto createVerify with the PEM from /v1/signing-keys/{kid}.pem and the body's
//      DER `signature` (what OpenSSL-style libraries take);
//   2. crypto.subtle.verify (browsers, Deno, edge runtimes) with the key imported from the
//      JWKS and the raw r||s signature of the `webhook-signature-p1363` header;
//   3. jose's createRemoteJWKSet on the JWKS URL, selecting the key by kid and alg. jose
//      verifies JWS, whose signing input is `base64url(header).payload`, not payloadAsString,
//      so jose fetches, selects and imports the key and crypto.subtle checks the signature.
// Usage: node webcrypto_verify.mjs <cases.json>; prints one JSON result per delivery.
import { createVerify } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createRemoteJWKSet } from "jose";

const WEBCRYPTO = {
  ES256: { import: { name: "ECDSA", namedCurve: "P-256" }, verify: { name: "ECDSA", hash: "SHA-256" } },
  RS256: { import: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, verify: { name: "RSASSA-PKCS1-v1_5" } },
};

async function getOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  return response;
}

const { baseUrl, deliveries } = JSON.parse(await readFile(process.argv[2], "utf8"));
const jwksUrl = `${baseUrl}/.well-known/jwks.json`;
const jwks = await (await getOk(jwksUrl)).json();
const remoteKeys = createRemoteJWKSet(new URL(jwksUrl));
const results = [];
for (const delivery of deliveries) {
  const body = JSON.parse(delivery.body);
  const kid = delivery.headers["webhook-key-id"];
  const alg = delivery.headers["webhook-signature-algorithm"];
  const raw = Buffer.from(delivery.headers["webhook-signature-p1363"], "base64");
  const data = new TextEncoder().encode(body.payloadAsString);
  const tampered = new TextEncoder().encode(body.payloadAsString + " ");
  const { import: importParams, verify: verifyParams } = WEBCRYPTO[alg];

  const pem = await (await getOk(`${baseUrl}/v1/signing-keys/${kid}.pem`)).text();
  const createVerifyOk = createVerify("SHA256")
    .update(body.payloadAsString)
    .verify(pem, body.signature, "base64");

  const jwk = jwks.keys.find((key) => key.kid === kid);
  const subtleKey = await crypto.subtle.importKey("jwk", jwk, importParams, false, ["verify"]);
  const subtleOk = await crypto.subtle.verify(verifyParams, subtleKey, raw, data);
  const subtleTampered = await crypto.subtle.verify(verifyParams, subtleKey, raw, tampered);
  // The body's DER signature, given to WebCrypto as is: false for ES256, the finding.
  const der = Buffer.from(body.signature, "base64");
  const subtleWithDer = await crypto.subtle.verify(verifyParams, subtleKey, der, data);

  const joseKey = await remoteKeys({ alg, kid });
  const joseOk = await crypto.subtle.verify(verifyParams, joseKey, raw, data);

  results.push({ kid, alg, jwkAlg: jwk.alg, createVerifyOk, subtleOk, subtleTampered, subtleWithDer, joseOk });
}
console.log(JSON.stringify(results));

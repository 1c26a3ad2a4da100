// Sign-in: a pasted token (`oc whoami -t`, a static token, an OIDC token), or the OIDC
// authorization-code flow with PKCE (S256), state and nonce, as a public client. Only the
// flow's one-time verifier, state and nonce wait in sessionStorage across the issuer's redirect;
// the token itself is kept in memory only.

import { call, signIn } from "./api.js";
import { h, show } from "./dom.js";

const PENDING = "maas-portal-oidc-pending";

/** Renders the sign-in page into `main`; calls `onSignedIn(session)` when a token works. */
export function renderSignIn(main, config, onSignedIn, message) {
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, "aria-describedby": "token-hint",
  });
  const status = h("div", { id: "signin-status", "aria-live": "polite" }, message ? h("p", { class: "error", role: "alert" }, message) : null);
  const submit = h("button", { type: "submit", id: "signin-submit" }, "Sign in");
  const form = h("form", { class: "panel", id: "signin-form", onsubmit: async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) {
      show(status, h("p", { class: "error", role: "alert" }, "Paste a token first."));
      input.focus();
      return;
    }
    submit.disabled = true;
    show(status, h("p", { class: "loading", role: "status" }, "Checking the token…"));
    const session = await trySession(value);
    submit.disabled = false;
    if (session.error) {
      show(status, h("p", { class: "error", role: "alert" }, session.error));
      input.select();
      return;
    }
    input.value = "";
    onSignedIn(session.session);
  } },
    h("label", { for: "token" }, "Access token"),
    h("p", { class: "hint", id: "token-hint" },
      "Paste your OpenShift token (oc whoami -t) or the token your administrator gave you. ",
      "It stays in this tab's memory only: reloading the page signs you out."),
    input,
    h("div", { class: "actions" }, submit),
  );
  const oidc = config && config.oidc
    ? h("section", { class: "panel", "aria-labelledby": "oidc-title" },
      h("h2", { id: "oidc-title" }, "Single sign-on"),
      h("p", { class: "hint" }, `Sign in at ${config.oidc.issuer}.`),
      h("button", { type: "button", id: "oidc-start", onclick: () => startOidc(config.oidc, status) }, "Sign in with single sign-on"))
    : null;
  show(main, h("div", { class: "signin" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Create and revoke your API keys, see your models, limits and usage."),
    oidc, form, status));
  input.focus();
}

/** Checks a token against the server; `{session}` or `{error}` (said for a person). */
export async function trySession(value) {
  signIn(value);
  try {
    return { session: await call("ui/session") };
  } catch (error) {
    signIn(null);
    if (error.status === 401) return { error: "This token is not accepted (expired, revoked or mistyped)." };
    return { error: `Cannot sign in: ${error.message}` };
  }
}

function base64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

function redirectUri() {
  return `${window.location.origin}${window.location.pathname}`;
}

async function discovery(issuer) {
  const response = await fetch(`${issuer}/.well-known/openid-configuration`, { credentials: "omit", cache: "no-store" });
  if (!response.ok) throw new Error(`discovery answered HTTP ${response.status}`);
  const document = await response.json();
  if (document.issuer !== issuer) throw new Error("the discovery document names another issuer");
  return document;
}

async function startOidc(oidc, status) {
  try {
    show(status, h("p", { class: "loading", role: "status" }, "Redirecting to the sign-on page…"));
    const provider = await discovery(oidc.issuer);
    const verifier = randomText();
    const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = randomText();
    const nonce = randomText();
    sessionStorage.setItem(PENDING, JSON.stringify({
      verifier, state, nonce, tokenEndpoint: provider.token_endpoint, issuer: oidc.issuer,
      clientId: oidc.clientId, returnTo: window.location.hash || "#/keys",
    }));
    const authorize = new URL(provider.authorization_endpoint);
    authorize.search = new URLSearchParams({
      response_type: "code", client_id: oidc.clientId, redirect_uri: redirectUri(), scope: oidc.scopes,
      state, nonce, code_challenge: challenge, code_challenge_method: "S256",
    }).toString();
    window.location.assign(authorize.toString());
  } catch (error) {
    show(status, h("p", { class: "error", role: "alert" }, `Single sign-on is unavailable: ${error.message}`));
  }
}

/**
 * On return from the issuer (`?code=…&state=…` or `?error=…`): checks state, redeems the code
 * with the PKCE verifier, checks the ID token's nonce, issuer and audience, and returns
 * `{token, returnTo}`; `null` when this page load is not a return; throws on any mismatch.
 */
export async function finishOidc() {
  const params = new URLSearchParams(window.location.search);
  if (!params.has("code") && !params.has("error")) return null;
  const pendingText = sessionStorage.getItem(PENDING);
  sessionStorage.removeItem(PENDING);
  window.history.replaceState(null, "", redirectUri());
  if (params.has("error")) {
    throw new Error(`the sign-on page refused: ${params.get("error_description") || params.get("error")}`);
  }
  if (!pendingText) throw new Error("no sign-in was started from this tab");
  const pending = JSON.parse(pendingText);
  if (params.get("state") !== pending.state) throw new Error("the sign-in answer does not match the request (state)");
  const response = await fetch(pending.tokenEndpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code: params.get("code"), redirect_uri: redirectUri(),
      client_id: pending.clientId, code_verifier: pending.verifier,
    }).toString(),
    credentials: "omit",
    cache: "no-store",
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`the token endpoint refused: ${answer.error_description || answer.error || response.status}`);
  const idToken = answer.id_token;
  if (!idToken) throw new Error("the issuer returned no ID token");
  const claims = JSON.parse(new TextDecoder().decode(
    Uint8Array.from(atob(idToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0))));
  if (claims.nonce !== pending.nonce) throw new Error("the ID token does not match the request (nonce)");
  if (claims.iss !== pending.issuer) throw new Error("the ID token comes from another issuer");
  const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!audiences.includes(pending.clientId)) throw new Error("the ID token is for another client");
  // The server verifies the signature, expiry and audience on every call.
  return { token: idToken, returnTo: pending.returnTo };
}

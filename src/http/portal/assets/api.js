// The REST client: every call carries the signed-in user's bearer token, which lives only in
// this module's memory (never in storage, cookies or the URL).

let token = null;

/** The API's base: the portal is served at <base>/ui/, the API at <base>/v1/. */
export const apiBase = new URL("../", window.location.href);

export function signIn(value) { token = value; }
export function signOut() { token = null; }
export function signedIn() { return token !== null; }

/** An API error with the server's message (both of its error shapes) and HTTP status. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function errorFrom(status, body) {
  const error = body && body.error;
  if (error && typeof error === "object") {
    return new ApiError(status, error.message || `HTTP ${status}`, error.code || error.type);
  }
  if (typeof error === "string") {
    return new ApiError(status, error, body.code);
  }
  return new ApiError(status, `The server answered HTTP ${status}`, undefined);
}

/** Calls `path` (relative, e.g. "v1/api-keys") and returns the parsed JSON answer. */
export async function call(path, { method = "GET", body, signal } = {}) {
  const response = await send(path, { method, body, signal });
  const text = await response.text();
  let parsed = null;
  if (text) {
    try { parsed = JSON.parse(text); } catch { parsed = null; }
  }
  if (!response.ok) throw errorFrom(response.status, parsed);
  return parsed;
}

/** Calls `path` and returns the answer as a Blob (CSV export). */
export async function download(path) {
  const response = await send(path, { method: "GET" });
  if (!response.ok) {
    let parsed = null;
    try { parsed = await response.json(); } catch { parsed = null; }
    throw errorFrom(response.status, parsed);
  }
  return response.blob();
}

async function send(path, { method, body, signal }) {
  const headers = { "Accept": "application/json" };
  if (token !== null) headers["Authorization"] = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    return await fetch(new URL(path, apiBase), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      redirect: "error",
      signal,
    });
  } catch (error) {
    throw new ApiError(0, `Cannot reach the server (${error.message})`, "network");
  }
}

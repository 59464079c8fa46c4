// Calls to the gateway's JSON API (/v1/*), with the session's CSRF header on every state-changing request.

/** An error the gateway answered: its HTTP status and the JSON body's code, message, reason and details. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || "";
    this.reason = (body && body.reason) || "";
    this.details = (body && body.details) || [];
  }

  /** The field violations of a bad request, as "field: description" lines. */
  fields() {
    const lines = [];
    for (const detail of this.details) {
      for (const v of (detail && detail.fieldViolations) || []) lines.push(`${v.field}: ${v.description}`);
    }
    return lines;
  }
}

/** What the page knows of its session: set by `session()` and `login()`. */
export const session = { principal: "", loginRequired: false, csrfHeader: "X-CSRF-Token", csrfToken: "" };

/** An ApiError for a response that is not ok, from its JSON body when it has one. */
export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return new ApiError(response.status, body);
}

/** Call the API; the parsed JSON body (null for 204), or an ApiError thrown. */
export async function call(method, path, body = undefined) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrfToken) headers[session.csrfHeader] = session.csrfToken;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/v1/login") && !path.startsWith("/v1/session")) sessionEnded();
    throw await errorOf(response);
  }
  return response.status === 204 ? null : response.json();
}

/** The session cookie expired (or the keys changed): app.js shows the login form, then the same view again. */
export function sessionEnded() {
  window.dispatchEvent(new Event("facilitair:login"));
}

/** Who the page is; false when it must log in first. */
export async function loadSession() {
  try {
    Object.assign(session, await call("GET", "/v1/session"));
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      session.loginRequired = true;
      return false;
    }
    throw error;
  }
}

/** Turn a key into the session cookie (HttpOnly: this script never sees it) and keep the CSRF token. */
export async function login(key) {
  Object.assign(session, await call("POST", "/v1/login", { key }), { loginRequired: true });
}

/** Forget the session cookie. */
export async function logout() {
  await call("POST", "/v1/logout");
  Object.assign(session, { principal: "", csrfToken: "" });
}

/** The URL path of a run's API resource. */
export function runPath(runId, suffix = "") {
  return `/v1/runs/${encodeURIComponent(runId)}${suffix}`;
}

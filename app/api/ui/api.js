// Talking to the service: JSON requests, the API key and the admin token, errors.
//
// Secrets live in sessionStorage (this tab's session) and never in the URL or
// localStorage. Images and downloads go through plain URLs when no key is needed and
// through fetched blobs when one is (an <img> cannot send a header).

const KEY = 'ddpm.apiKey';
const ADMIN = 'ddpm.adminToken';

function session(name, value) {
  try {
    if (value === undefined) return sessionStorage.getItem(name) || '';
    if (value) sessionStorage.setItem(name, value);
    else sessionStorage.removeItem(name);
  } catch {
    // storage disabled: secrets live in memory only
    session.memory = session.memory || {};
    if (value === undefined) return session.memory[name] || '';
    session.memory[name] = value;
  }
  return value;
}

export const auth = {
  get key() { return session(KEY); },
  set key(v) { session(KEY, v); },
  get admin() { return session(ADMIN); },
  set admin(v) { session(ADMIN, v); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    const fields = Array.isArray(detail) ? detail.filter((d) => d && d.field) : [];
    const text = fields.length
      ? fields.map((f) => `${f.field}: ${f.reason}`).join('; ')
      : typeof detail === 'string' ? detail : `HTTP ${status}`;
    super(text);
    this.status = status;
    this.detail = detail;
    this.fields = fields; // [{field, reason}] of a 422
  }
}

let keyPrompt = null;
/** Register the function that asks the user for an API key: async (reason) => entered? */
export function onKeyNeeded(fn) { keyPrompt = fn; }

export function authHeaders(admin = false) {
  if (admin && auth.admin) return { Authorization: `Bearer ${auth.admin}` };
  if (auth.key) return { 'X-API-Key': auth.key };
  return {};
}

async function detailOf(res) {
  try {
    const body = await res.json();
    return body && 'detail' in body ? body.detail : body;
  } catch {
    return res.statusText || `HTTP ${res.status}`;
  }
}

/** A JSON request; ApiError for any answer but 2xx. A 401 asks for an API key and retries. */
export async function request(path, { method = 'GET', body, admin = false } = {}) {
  for (let tries = 0; ; tries++) {
    const headers = { Accept: 'application/json', ...authHeaders(admin) };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
    if (res.status === 401 && !admin && tries < 3 && keyPrompt) {
      if (await keyPrompt(await detailOf(res))) continue;
    }
    if (!res.ok) throw new ApiError(res.status, await detailOf(res));
    return res.status === 204 ? null : parseJSON(await res.text());
  }
}

/**
 * JSON.parse that keeps integers beyond 2^53 exact, as strings of digits (seeds go up to
 * 2^62; the service accepts them back as strings). Needs JSON.parse source text access;
 * without it such integers lose their last digits, so the page picks its own seeds below
 * 2^53 (see generate.js).
 */
export function parseJSON(text) {
  return JSON.parse(text, (key, value, ctx) => (
    typeof value === 'number' && Number.isInteger(value) && !Number.isSafeInteger(value)
      && ctx && typeof ctx.source === 'string' && /^-?\d+$/.test(ctx.source)
      ? ctx.source : value));
}

const blobs = new WeakMap();

/** Point an <img> (or the href of an <a>) at a service URL, with the key when one is set. */
export async function setSource(el, url, { admin = false } = {}) {
  const attr = el.tagName === 'A' ? 'href' : 'src';
  const old = blobs.get(el);
  const headers = authHeaders(admin);
  if (!Object.keys(headers).length) {
    el.setAttribute(attr, url);
  } else {
    const res = await fetch(url, { headers, cache: 'no-store' });
    if (!res.ok) throw new ApiError(res.status, await detailOf(res));
    const blobUrl = URL.createObjectURL(await res.blob());
    blobs.set(el, blobUrl);
    el.setAttribute(attr, blobUrl);
  }
  if (old) URL.revokeObjectURL(old);
}

/** Resolves when an <img> has loaded its current source (rejects on error). */
export function loaded(img) {
  if (img.complete && img.naturalWidth) return Promise.resolve(img);
  return new Promise((resolve, reject) => {
    img.addEventListener('load', () => resolve(img), { once: true });
    img.addEventListener('error', () => reject(new Error('image failed to load')), { once: true });
  });
}

let schema = null;
/** The service's OpenAPI document (samplers, training options), fetched once. */
export async function openapi() {
  if (!schema) {
    try {
      const res = await fetch('/openapi.json', { cache: 'no-store' });
      schema = res.ok ? await res.json() : {};
    } catch {
      schema = {};
    }
  }
  return schema;
}

/** The properties of a schema of the OpenAPI document (e.g. TrainOptions). */
export async function schemaOf(name) {
  const doc = await openapi();
  return (doc.components && doc.components.schemas && doc.components.schemas[name]) || null;
}

/** The allowed values of an enum-like property (e.g. GenerateRequest.sampler). */
export async function enumOf(schemaName, prop, fallback) {
  const s = await schemaOf(schemaName);
  const p = s && s.properties && s.properties[prop];
  if (!p) return fallback;
  const variants = p.enum ? [p] : (p.anyOf || []);
  for (const v of variants) if (Array.isArray(v.enum)) return v.enum;
  return fallback;
}

export const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

// History: the jobs this browser submitted. Only job ids, their kind, the time and a
// small thumbnail are kept (localStorage); everything else is asked of the service.

import { ApiError, request } from './api.js';

const HKEY = 'ddpm.history';
const MAX = 40;

export function entries() {
  try {
    const list = JSON.parse(localStorage.getItem(HKEY) || '[]');
    return Array.isArray(list) ? list.filter((e) => e && typeof e.id === 'string') : [];
  } catch {
    return [];
  }
}

function save(list) {
  try {
    localStorage.setItem(HKEY, JSON.stringify(list.slice(0, MAX)));
  } catch {
    // full or disabled: history is a convenience
  }
}

export function remember(id, kind) {
  const list = entries().filter((e) => e.id !== id);
  list.unshift({ id, kind, t: Date.now() });
  save(list);
}

export function setThumb(id, thumb) {
  const list = entries();
  const entry = list.find((e) => e.id === id);
  if (entry && thumb) { entry.thumb = thumb; save(list); }
}

/** Forget every entry; returns them (for an undo). */
export function clearHistory() {
  const old = entries();
  save([]);
  return old;
}

/** Put entries back (an undone clear), before any added since. */
export function restoreHistory(list) {
  const now = entries();
  save([...now, ...list.filter((e) => !now.some((n) => n.id === e.id))]);
}

/** A small PNG data URL of an image already loaded on the page (pixels kept sharp). */
export function thumbnail(img, size = 72) {
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  if (!w || !h) return null;
  const scale = size / Math.max(w, h);
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, Math.round(w * scale));
  canvas.height = Math.max(1, Math.round(h * scale));
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  try {
    return canvas.toDataURL('image/png');
  } catch {
    return null;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function when(t) {
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleString();
}

export async function renderHistory(root) {
  const list = root.querySelector('#history-list');
  const empty = root.querySelector('#history-empty');
  const items = entries();
  list.replaceChildren();
  empty.hidden = items.length > 0;
  for (const e of items) {
    const href = e.kind === 'train' ? `#/train?job=${e.id}` : `#/job/${e.id}`;
    const status = el('span', { class: 'pill', text: '…' });
    const detail = el('span', { class: 'muted small', text: '' });
    const thumb = e.thumb
      ? el('img', { src: e.thumb, alt: '', class: 'thumb' })
      : el('span', { class: 'thumb none', 'aria-hidden': 'true' });
    const link = el('a', { href, text: `${e.kind === 'train' ? 'Training' : 'Job'} ${e.id.slice(0, 8)}` });
    const li = el('li', { 'data-job': e.id }, thumb,
      el('div', {}, link, el('br'), status, ' ', detail, el('br'), el('span', { class: 'muted small', text: when(e.t) })));
    list.append(li);
    request(`/jobs/${e.id}`).then((doc) => {
      status.textContent = doc.status;
      status.dataset.status = doc.status;
      li.dataset.status = doc.status;
      const r = doc.request || {};
      detail.textContent = doc.kind === 'train'
        ? `${r.name || ''} · ${(r.options && r.options.steps) || ''} steps`
        : `${r.checkpoint || ''} · ${r.count} image${r.count === 1 ? '' : 's'} · seed ${r.seed}`;
    }).catch((err) => {
      const gone = err instanceof ApiError && err.status === 404;
      status.textContent = gone ? 'expired' : 'unknown';
      status.dataset.status = gone ? 'expired' : 'unknown';
    });
  }
}

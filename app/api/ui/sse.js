// Following a job: Server-Sent Events first, polling GET /jobs/{id} when streams fail.
//
// Without a key the browser's own EventSource does the work: it reconnects by itself
// with Last-Event-ID when a stream drops or the server ends it (streams have a maximum
// lifetime). EventSource cannot send headers, so with a key a small fetch-based reader
// does the same. A stream that cannot be opened at all (429: too many streams, 503)
// falls back to polling.

import { ApiError, authHeaders, request, TERMINAL } from './api.js';

const EVENTS = ['status', 'progress', 'preview', 'done'];

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

/** Open an event stream; returns {close()}. onFatal(status) when it cannot continue. */
export function openEvents(url, { headers = null, onEvent, onOpen, onFatal }) {
  if (!headers || !Object.keys(headers).length) {
    const es = new EventSource(url);
    for (const name of EVENTS) {
      es.addEventListener(name, (e) => onEvent(name, JSON.parse(e.data), e.lastEventId));
    }
    es.onopen = () => onOpen && onOpen();
    // CONNECTING: a dropped stream that the browser resumes itself; CLOSED: it gave up.
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) onFatal && onFatal(0); };
    return { close: () => es.close(), kind: 'eventsource' };
  }
  return fetchEvents(url, headers, { onEvent, onOpen, onFatal });
}

function fetchEvents(url, headers, { onEvent, onOpen, onFatal }) {
  let closed = false;
  let lastId = '';
  let retry = 1000;
  let ctrl = null;
  let failures = 0;

  async function pump(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let event = '';
    let data = [];
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      const lines = buf.split(/\r\n|\r|\n/);
      buf = lines.pop();
      for (const line of lines) {
        if (line === '') { // dispatch
          if (id !== null) lastId = id;
          if (data.length && EVENTS.includes(event)) onEvent(event, JSON.parse(data.join('\n')), lastId);
          event = ''; data = []; id = null;
          continue;
        }
        if (line.startsWith(':')) continue;
        const at = line.indexOf(':');
        const field = at < 0 ? line : line.slice(0, at);
        const val = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
        else if (field === 'id') id = val;
        else if (field === 'retry' && /^\d+$/.test(val)) retry = Number(val);
      }
    }
  }

  (async () => {
    while (!closed) {
      ctrl = new AbortController();
      let res;
      try {
        const h = { Accept: 'text/event-stream', ...headers };
        if (lastId) h['Last-Event-ID'] = lastId;
        res = await fetch(url, { headers: h, signal: ctrl.signal, cache: 'no-store' });
      } catch {
        if (closed) return;
        if (++failures > 5) { onFatal && onFatal(0); return; }
        await sleep(retry);
        continue;
      }
      if (!res.ok || !res.body) { if (!closed && onFatal) onFatal(res.status); return; }
      failures = 0;
      if (onOpen) onOpen();
      try { await pump(res.body); } catch { /* dropped: resume below */ }
      if (!closed) await sleep(retry);
    }
  })();
  return { close: () => { closed = true; if (ctrl) ctrl.abort(); }, kind: 'fetch' };
}

/**
 * Follow job `id` until it ends. Handlers (all optional): doc(jobDocument), status(status),
 * progress(data), preview(data), mode('live' | 'polling'), done(jobDocument), error(err).
 * With ``replay`` a finished job's kept events are replayed before ``done``.
 * Returns {stop()}.
 */
export function followJob(id, h, { preview = false, admin = false, replay = false } = {}) {
  let stopped = false;
  let stream = null;
  let timer = null;
  let queued = false;
  let finishing = false;
  const call = (name, ...args) => { if (!stopped && h[name]) h[name](...args); };

  async function doc() {
    const d = await request(`/jobs/${id}`, { admin });
    call('doc', d);
    return d;
  }

  async function finish() {
    if (finishing) return;
    finishing = true;
    if (stream) stream.close();
    clearTimeout(timer);
    try {
      const d = await request(`/jobs/${id}`, { admin });
      call('done', d);
    } catch (e) {
      call('error', e);
    }
    stopped = true;
  }

  // While queued, the document says where in the queue (events do not).
  function watchQueue() {
    clearTimeout(timer);
    if (!queued || stopped) return;
    timer = setTimeout(async () => {
      try { const d = await doc(); if (d.status !== 'queued') queued = false; } catch { /* next tick */ }
      watchQueue();
    }, 1000);
  }

  function poll() {
    call('mode', 'polling');
    const tick = async () => {
      if (stopped) return;
      try {
        const d = await doc();
        if (TERMINAL.has(d.status)) { finish(); return; }
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) { call('error', e); stopped = true; return; }
      }
      timer = setTimeout(tick, 1000);
    };
    tick();
  }

  function live() {
    const url = `/jobs/${id}/events${preview ? '?preview=1' : ''}`;
    const headers = authHeaders(admin);
    stream = openEvents(url, {
      headers,
      onOpen: () => call('mode', 'live'),
      onEvent: (name, data) => {
        if (stopped) return;
        if (name === 'status') {
          call('status', data.status, data);
          queued = data.status === 'queued';
          if (queued) watchQueue();
        } else if (name === 'progress') {
          queued = false;
          call('progress', data);
        } else if (name === 'preview') {
          call('preview', data);
        } else if (name === 'done') {
          finish();
        }
      },
      onFatal: () => { stream = null; if (!stopped && !finishing) poll(); },
    });
  }

  // replay: a finished job's stream still gives its events (while the service keeps
  // them), then its done; without it a finished job is shown from its document alone.
  doc().then((d) => {
    if (TERMINAL.has(d.status) && !replay) finish();
    else live();
  }).catch((e) => { call('error', e); stopped = true; });

  return {
    stop() { stopped = true; clearTimeout(timer); if (stream) stream.close(); },
  };
}

// The panel of one generation job: queue position, the wait for the engine, progress with
// ETA, live preview, cancel, then the results (grid, each image with its seed, downloads,
// the animation) and "use these settings".

import { loaded, request, setSource, TERMINAL } from './api.js';
import { setThumb, thumbnail } from './history.js';
import { followJob } from './sse.js';

export function duration(s) {
  if (!Number.isFinite(s) || s < 0) return '';
  if (s < 1) return '<1 s';
  if (s < 90) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

/** The file extension of a result URL (png, webp, jpg): its download keeps it. */
function extension(url) {
  const m = /\.([a-z0-9]+)$/.exec(url || '');
  return m ? m[1] : 'png';
}

/** "about 12 s waiting for the engine"-style words for the stages of a job's time. */
function timeline(m) {
  const parts = [];
  if (m.queue_seconds > 0.5) parts.push(`${duration(m.queue_seconds)} in the queue`);
  if (m.wait_seconds > 0.5) parts.push(`${duration(m.wait_seconds)} waiting for the engine`);
  return parts.length ? ` after ${parts.join(' and ')}` : '';
}

export class JobView {
  /** root: the #job section; onAlone(doc, image): re-submit one image alone; onUse(doc):
   * put its settings in the form; onDoc(doc): a document was shown. */
  constructor(root, { onAlone, onUse = null, onDoc = null }) {
    this.root = root;
    this.onAlone = onAlone;
    this.onUse = onUse;
    this.onDoc = onDoc;
    this.$ = (id) => root.querySelector(`#${id}`);
    this.follower = null;
    this.id = null;
    this.$('job-cancel').addEventListener('click', () => this.cancel());
    this.$('job-use').addEventListener('click', () => { if (this.doc && this.onUse) this.onUse(this.doc); });
  }

  attach(id, { preview = true } = {}) {
    if (this.follower) this.follower.stop();
    this.id = id;
    this.doc = null;
    this.eta = null;
    this.previewStep = -1;
    this.reset();
    this.$('job-title').textContent = `Job ${id.slice(0, 8)}`;
    this.follower = followJob(id, {
      doc: (d) => this.renderDoc(d),
      status: (s) => this.setStatus(s),
      progress: (p) => this.renderProgress(p),
      preview: (p) => this.renderPreview(p),
      mode: (m) => {
        this.$('job-mode').textContent = m === 'live' ? 'Live updates' : 'Live updates unavailable: checking every second';
        this.root.dataset.mode = m;
      },
      done: (d) => this.renderDone(d),
      error: (e) => this.unknown(e.status === 404
        ? `Job ${id} is unknown or has expired (finished jobs are kept for a day).`
        : `The job could not be shown: ${e.message}`),
    }, { preview });
  }

  /** No job in the panel (a new form). */
  detach() {
    if (this.follower) this.follower.stop();
    this.follower = null;
    this.id = null;
    this.doc = null;
    this.$('job-title').textContent = 'Job';
    this.$('job-body').hidden = true;
    this.$('job-empty').hidden = false;
    this.root.dataset.status = 'none';
    delete this.root.dataset.results;
  }

  /** A link that names no job: say so, in words (the service would answer a 422). */
  invalid(text) {
    if (this.follower) this.follower.stop();
    this.follower = null;
    this.id = null;
    this.reset();
    this.$('job-title').textContent = 'Job';
    this.unknown(`“${text.slice(0, 60)}” is not a job id: a job link looks like #/job/0b7c6f0e-6a51-4c55-9d1b-3f2a3c1e8d11.`);
  }

  unknown(text) {
    this.setStatus('unknown');
    this.$('job-cancel').hidden = true;
    this.$('job-mode').textContent = '';
    this.showError(text);
  }

  /** Bring the panel into view (a phone shows it below the form): its top in the upper
   * third of the screen, where its status and progress can be seen. */
  reveal() {
    const box = this.root.getBoundingClientRect();
    if (box.top < 0 || box.top > window.innerHeight / 3) {
      this.root.scrollIntoView({ block: 'start' });
    }
  }

  reset() {
    const $ = this.$;
    $('job-empty').hidden = true;
    $('job-body').hidden = false;
    for (const id of ['job-queue', 'job-progress-box', 'job-preview-fig', 'job-results', 'job-error', 'job-note', 'job-trajectory-fig', 'job-grid-fig']) $(id).hidden = true;
    $('job-cancel').hidden = true;
    $('job-use').hidden = true;
    $('job-progress').value = 0;
    $('job-progress-text').textContent = '';
    $('job-images').replaceChildren();
    $('job-summary').textContent = '';
    $('job-mode').textContent = '';
    $('job-preview').removeAttribute('src');
    $('job-grid').removeAttribute('src');
    this.waiting = false;
    this.waitStart = undefined;
    clearInterval(this.waitTimer);
    this.setStatus('…');
  }

  setStatus(status) {
    const pill = this.$('job-status');
    // A running job whose worker waits for engine capacity says so (progress.waiting).
    const shown = status === 'running' && this.waiting ? 'waiting' : status;
    pill.textContent = shown === 'waiting' ? 'waiting for the engine' : shown;
    pill.dataset.status = shown;
    this.root.dataset.status = shown;
    this.$('job-cancel').hidden = !(status === 'queued' || status === 'running');
    if (status !== 'queued') this.$('job-queue').hidden = true;
    if (status === 'running') this.$('job-progress-box').hidden = false;
  }

  renderDoc(d) {
    this.doc = d;
    this.$('job-use').hidden = false;
    const r = d.request || {};
    const parts = [r.checkpoint, `${r.count} image${r.count === 1 ? '' : 's'}`, `seed ${r.seed}`, `${r.steps} ${r.sampler} steps`];
    if (r.label !== null && r.label !== undefined) parts.push(`label ${r.label}, guidance ${r.guidance_scale}`);
    this.$('job-summary').textContent = parts.filter(Boolean).join(' · ');
    if (d.status === 'running' && d.progress) this.waiting = Boolean(d.progress.waiting);
    if (!TERMINAL.has(d.status)) this.setStatus(d.status);
    if (d.status === 'running' && this.waiting) this.renderWaiting(d.metrics && d.metrics.wait_seconds);
    const q = this.$('job-queue');
    if (d.status === 'queued') {
      q.hidden = false;
      const pos = d.queue_position;
      q.textContent = pos === null || pos === undefined
        ? 'Queued'
        : pos === 0 ? 'Queued: next in line' : `Queued: ${pos} job${pos === 1 ? '' : 's'} ahead`;
      q.dataset.position = pos ?? '';
    }
    if (d.status === 'running' && !this.waiting && d.progress && d.progress.total) {
      this.renderProgress(d.progress, d.eta_seconds);
    }
    if (this.onDoc) this.onDoc(d);
  }

  /** Claimed, not computing yet: the engine's calls are full of other jobs' images. */
  renderWaiting(seconds) {
    this.$('job-progress-box').hidden = false;
    this.$('job-queue').hidden = true;
    this.$('job-progress').value = 0;
    this.$('job-progress').setAttribute('aria-valuetext', 'waiting for the engine');
    if (this.waitStart === undefined || seconds !== undefined) {
      this.waitStart = performance.now() / 1000 - (seconds || 0);
    }
    const tick = () => {
      if (!this.waiting) return;
      const s = performance.now() / 1000 - this.waitStart;
      this.$('job-progress-text').textContent = `Waiting for the engine: it is busy with other jobs' images (${duration(s) || '<1 s'} so far)`;
    };
    tick();
    clearInterval(this.waitTimer);
    this.waitTimer = setInterval(() => { if (this.waiting) tick(); else clearInterval(this.waitTimer); }, 1000);
  }

  renderProgress(p, etaSeconds) {
    if (!p || !p.total) return;
    if (p.waiting) {
      this.waiting = true;
      this.setStatus('running');
      this.renderWaiting();
      return;
    }
    if (this.waiting) {
      this.waiting = false;
      clearInterval(this.waitTimer);
      this.setStatus('running');
    }
    this.$('job-progress-box').hidden = false;
    this.$('job-queue').hidden = true;
    const f = Math.min(1, Math.max(0, p.fraction ?? p.step / p.total));
    this.$('job-progress').value = f;
    this.$('job-progress').setAttribute('aria-valuetext', `${p.step} of ${p.total} steps`);
    const now = performance.now() / 1000;
    if (!this.eta && f > 0 && f < 1) this.eta = { t0: now, f0: f };
    let eta = etaSeconds;
    if (eta === undefined && this.eta && f > this.eta.f0) {
      eta = (now - this.eta.t0) * (1 - f) / (f - this.eta.f0);
    }
    const text = `${p.step}/${p.total} steps`;
    const left = f >= 1 ? 'finishing' : eta !== undefined && eta !== null ? `about ${duration(eta)} left` : '';
    this.$('job-progress-text').textContent = left ? `${text} · ${left}` : text;
    this.root.dataset.step = p.step;
  }

  async renderPreview(p) {
    if (p.step <= this.previewStep || this.root.dataset.status === 'succeeded') return;
    this.previewStep = p.step;
    const img = this.$('job-preview');
    try {
      await setSource(img, p.url);
      await loaded(img);
    } catch {
      return; // a newer preview replaced it, or the job finished: not worth an error
    }
    if (this.$('job-results').hidden) {
      this.$('job-preview-fig').hidden = false;
      this.$('job-preview-caption').textContent = `Current estimate at step ${p.step} of ${p.total}`;
      this.root.dataset.previewStep = p.step;
    }
  }

  async cancel() {
    if (!this.id) return;
    const btn = this.$('job-cancel');
    btn.disabled = true;
    try {
      const d = await request(`/jobs/${this.id}/cancel`, { method: 'POST' });
      if (d.status !== 'canceled') this.$('job-progress-text').textContent = 'Cancel requested: it stops at its next step';
    } catch (e) {
      this.showError(e.message);
    } finally {
      btn.disabled = false;
    }
  }

  showError(text) {
    const e = this.$('job-error');
    e.textContent = text;
    e.hidden = false;
  }

  async renderDone(d) {
    this.$('job-mode').textContent = '';
    this.waiting = false;
    clearInterval(this.waitTimer);
    this.renderDoc(d);
    this.setStatus(d.status);
    this.$('job-cancel').hidden = true;
    this.$('job-queue').hidden = true;
    const m = d.metrics || {};
    if (d.status === 'canceled') {
      // Where it stopped, once, as a note (a cancel is what was asked for, not an error).
      const p = d.progress || {};
      const ran = d.started_at && p.step > 0;
      this.$('job-progress-box').hidden = !ran;
      this.$('job-progress-text').textContent = '';
      this.note(ran ? `Canceled at step ${p.step} of ${p.total}.` : 'Canceled before it started.');
      return;
    }
    if (d.status !== 'succeeded') {
      const err = d.error || {};
      this.$('job-progress-text').textContent = '';
      this.showError(`Failed: ${err.type || 'error'}: ${err.message || ''}`);
      return;
    }
    this.$('job-progress-box').hidden = false;
    this.$('job-progress').value = 1;
    this.$('job-progress').setAttribute('aria-valuetext', 'done');
    this.$('job-progress-text').textContent = `Done in ${duration(m.run_seconds)}${timeline(m)}`;
    this.$('job-preview-fig').hidden = true;
    await this.renderResults(d);
  }

  note(text) {
    const n = this.$('job-note');
    n.textContent = text;
    n.hidden = false;
  }

  async renderResults(d) {
    const $ = this.$;
    const res = d.result || {};
    const short = d.id.slice(0, 8);
    $('job-results').hidden = false;
    const images = res.images || [];
    const one = images.length === 1;
    // One image: the grid would be the same image again; the image itself is shown large.
    $('job-grid-fig').hidden = one;
    $('job-results').classList.toggle('one', one);
    const grid = $('job-grid');
    if (!one) {
      try {
        await setSource(grid, res.grid_url);
        await setSource($('job-grid-download'), res.grid_url);
        $('job-grid-download').setAttribute('download', `${short}-grid.${extension(res.grid_url)}`);
        await loaded(grid);
        setThumb(d.id, thumbnail(grid));
      } catch (e) {
        this.showError(`The grid could not be loaded: ${e.message}`);
      }
    }
    if (res.trajectory_url) {
      $('job-trajectory-fig').hidden = false;
      await setSource($('job-trajectory'), res.trajectory_url).catch(() => {});
      await setSource($('job-trajectory-download'), res.trajectory_url).catch(() => {});
      $('job-trajectory-download').setAttribute('download', `${short}-denoising.gif`);
    }
    const list = $('job-images');
    list.replaceChildren();
    $('job-images-title').textContent = one ? 'Image' : 'Images';
    for (const image of images) {
      const li = document.createElement('li');
      const fig = document.createElement('figure');
      const img = document.createElement('img');
      img.id = `job-image-${image.index}`;
      img.alt = `Image ${image.index}, seed ${image.seed}`;
      img.dataset.seed = image.seed;
      img.dataset.index = image.index;
      const cap = document.createElement('figcaption');
      const seed = document.createElement('span');
      seed.textContent = `seed ${image.seed}`;
      seed.title = `seed ${image.seed}`;
      seed.className = 'seed';
      const dl = document.createElement('a');
      dl.textContent = 'Download';
      dl.setAttribute('download', `${short}_${String(image.index).padStart(5, '0')}_seed${image.seed}.${extension(image.url)}`);
      dl.setAttribute('aria-label', `Download image ${image.index} (seed ${image.seed})`);
      const alone = document.createElement('button');
      alone.type = 'button';
      alone.className = 'secondary small';
      alone.textContent = 'This image alone';
      alone.dataset.index = image.index;
      alone.setAttribute('aria-label', `Generate image ${image.index} alone (count 1, seed ${image.seed})`);
      alone.addEventListener('click', () => this.onAlone(d, image));
      cap.append(seed, ' ', dl);
      if (!one) cap.append(' ', alone); // a one-image job is that image alone already
      fig.append(img, cap);
      li.append(fig);
      list.append(li);
      setSource(img, image.url).then(() => {
        if (one) loaded(img).then(() => setThumb(d.id, thumbnail(img))).catch(() => {});
      }).catch(() => {});
      setSource(dl, image.url).catch(() => {});
    }
    this.root.dataset.results = String(images.length);
  }
}

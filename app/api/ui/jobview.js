// The panel of one generation job: queue position, progress with ETA, live preview,
// cancel, then the results (grid, each image with its seed, downloads, the animation).

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

export class JobView {
  /** root: the #job section; onAlone(doc, image): re-submit one image alone. */
  constructor(root, { onAlone }) {
    this.root = root;
    this.onAlone = onAlone;
    this.$ = (id) => root.querySelector(`#${id}`);
    this.follower = null;
    this.id = null;
    this.$('job-cancel').addEventListener('click', () => this.cancel());
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
      error: (e) => this.showError(e.status === 404 ? `Job ${id} is unknown or has expired.` : e.message),
    }, { preview });
  }

  reset() {
    const $ = this.$;
    $('job-empty').hidden = true;
    $('job-body').hidden = false;
    for (const id of ['job-queue', 'job-progress-box', 'job-preview-fig', 'job-results', 'job-error', 'job-trajectory-fig']) $(id).hidden = true;
    $('job-cancel').hidden = true;
    $('job-progress').value = 0;
    $('job-progress-text').textContent = '';
    $('job-images').replaceChildren();
    $('job-summary').textContent = '';
    $('job-mode').textContent = '';
    $('job-preview').removeAttribute('src');
    $('job-grid').removeAttribute('src');
    this.setStatus('…');
  }

  setStatus(status) {
    const pill = this.$('job-status');
    pill.textContent = status;
    pill.dataset.status = status;
    this.root.dataset.status = status;
    this.$('job-cancel').hidden = !(status === 'queued' || status === 'running');
    if (status !== 'queued') this.$('job-queue').hidden = true;
    if (status === 'running') this.$('job-progress-box').hidden = false;
  }

  renderDoc(d) {
    this.doc = d;
    const r = d.request || {};
    const parts = [r.checkpoint, `${r.count} image${r.count === 1 ? '' : 's'}`, `seed ${r.seed}`, `${r.steps} ${r.sampler} steps`];
    if (r.label !== null && r.label !== undefined) parts.push(`label ${r.label}, guidance ${r.guidance_scale}`);
    this.$('job-summary').textContent = parts.filter(Boolean).join(' · ');
    if (!TERMINAL.has(d.status)) this.setStatus(d.status);
    const q = this.$('job-queue');
    if (d.status === 'queued') {
      q.hidden = false;
      const pos = d.queue_position;
      q.textContent = pos === null || pos === undefined
        ? 'Queued'
        : pos === 0 ? 'Queued: next in line' : `Queued: ${pos} job${pos === 1 ? '' : 's'} ahead`;
      q.dataset.position = pos ?? '';
    }
    if (d.status === 'running' && d.progress && d.progress.total) {
      this.renderProgress(d.progress, d.eta_seconds);
    }
  }

  renderProgress(p, etaSeconds) {
    if (!p || !p.total) return;
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
      this.$('job-progress-text').textContent = d.status === 'canceled' ? 'Canceled' : 'Cancel requested: it stops at its next step';
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
    this.renderDoc(d);
    this.setStatus(d.status);
    this.$('job-cancel').hidden = true;
    this.$('job-queue').hidden = true;
    if (d.status !== 'succeeded') {
      const err = d.error || {};
      this.showError(d.status === 'canceled'
        ? `Canceled${err.message ? `: ${err.message}` : ''}.`
        : `Failed: ${err.type || 'error'}: ${err.message || ''}`);
      return;
    }
    this.$('job-progress').value = 1;
    const m = d.metrics || {};
    this.$('job-progress-text').textContent = `Done in ${duration(m.run_seconds)}` + (m.queue_seconds > 0.5 ? ` after ${duration(m.queue_seconds)} in the queue` : '');
    this.$('job-preview-fig').hidden = true;
    await this.renderResults(d);
  }

  async renderResults(d) {
    const $ = this.$;
    const res = d.result || {};
    const short = d.id.slice(0, 8);
    $('job-results').hidden = false;
    const grid = $('job-grid');
    try {
      await setSource(grid, res.grid_url);
      await setSource($('job-grid-download'), res.grid_url);
      $('job-grid-download').setAttribute('download', `${short}-grid.png`);
      await loaded(grid);
      setThumb(d.id, thumbnail(grid));
    } catch (e) {
      this.showError(`The grid could not be loaded: ${e.message}`);
    }
    if (res.trajectory_url) {
      $('job-trajectory-fig').hidden = false;
      await setSource($('job-trajectory'), res.trajectory_url).catch(() => {});
      await setSource($('job-trajectory-download'), res.trajectory_url).catch(() => {});
      $('job-trajectory-download').setAttribute('download', `${short}-denoising.gif`);
    }
    const list = $('job-images');
    list.replaceChildren();
    for (const image of res.images || []) {
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
      seed.className = 'seed';
      const dl = document.createElement('a');
      dl.textContent = 'Download';
      dl.setAttribute('download', `${short}_${String(image.index).padStart(5, '0')}_seed${image.seed}.png`);
      dl.setAttribute('aria-label', `Download image ${image.index} (seed ${image.seed})`);
      const alone = document.createElement('button');
      alone.type = 'button';
      alone.className = 'secondary small';
      alone.textContent = 'This image alone';
      alone.dataset.index = image.index;
      alone.setAttribute('aria-label', `Generate image ${image.index} alone (count 1, seed ${image.seed})`);
      alone.addEventListener('click', () => this.onAlone(d, image));
      cap.append(seed, ' ', dl, ' ', alone);
      fig.append(img, cap);
      li.append(fig);
      list.append(li);
      setSource(img, image.url).catch(() => {});
      setSource(dl, image.url).catch(() => {});
    }
    this.root.dataset.results = String((res.images || []).length);
  }
}

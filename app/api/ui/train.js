// Admin: the training form (built from the service's TrainOptions schema), the token
// (this browser session only), and a live view of the run: loss and learning-rate curve
// from the progress events, the sample grids as they are written, the new version.

import { auth, request, schemaOf, setSource, TERMINAL } from './api.js';
import { LossChart } from './chart.js';
import { checkNumber, clearErrors, clearOnEdit, limitText, numberRule, showErrors, showProblems } from './forms.js';
import { remember } from './history.js';
import { followJob } from './sse.js';
import { duration } from './jobview.js';

// Shown first; the rest goes under "More options".
const PRIMARY = ['dataset', 'preset', 'image_size', 'channels', 'class_cond', 'steps', 'batch_size', 'lr',
  'warmup', 'schedule', 'timesteps', 'sample_every', 'sample_count', 'default_steps', 'default_sampler',
  'guidance_scale'];

const human = (name) => name.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());

// Each option in words: [label, hint]. The schema has the types, defaults and limits.
const WORDS = {
  dataset: ['Dataset', '"digits" (built in) or an image folder under DATA_DIR/datasets'],
  preset: ['Network size', 'tiny trains in minutes on a CPU; larger ones need a GPU'],
  image_size: ['Image size (px)', 'empty: 16 for digits, else 32'],
  channels: ['Colour channels', '1: grey, 3: RGB; empty: from the dataset'],
  unet_overrides: ['Network overrides', 'JSON, e.g. {"channel_mult": [1, 2, 2]}'],
  class_cond: ['Class-conditional', 'learn the labels too, so that images can be asked for by label'],
  p_uncond: ['Label dropout', 'share of steps trained without the label: what guidance needs'],
  random_flip: ['Random flips', 'mirror training images left-right at random'],
  schedule: ['Noise schedule', 'how noise grows over the timesteps'],
  timesteps: ['Timesteps (T)', 'length of the noising process; sampling steps are at most T'],
  loss: ['Loss', 'what the error is measured with'],
  prediction_type: ['Network predicts', 'epsilon: the noise; v or sample: alternatives'],
  steps: ['Training steps', 'optimizer steps of the run'],
  batch_size: ['Batch size', 'images per step'],
  accumulate: ['Accumulate', 'batches per optimizer step (a larger batch in less memory)'],
  lr: ['Learning rate', 'peak step size of the optimizer'],
  weight_decay: ['Weight decay', 'AdamW weight decay'],
  adam_betas: ['Adam betas', 'two numbers, e.g. 0.9, 0.999'],
  warmup: ['Warm-up steps', 'the learning rate rises linearly over these steps'],
  lr_schedule: ['Learning-rate schedule', 'after the warm-up'],
  min_lr_ratio: ['Final learning rate', 'as a fraction of the peak (cosine schedule)'],
  grad_clip: ['Gradient clipping', 'largest gradient norm; empty: none'],
  ema_decay: ['EMA decay', 'how slowly the averaged weights follow the trained ones'],
  ema_warmup: ['EMA warm-up', 'ramp the EMA decay up at the start'],
  precision: ['Precision', 'number format of the training arithmetic'],
  save_every: ['Save every', 'steps between saved states (a run resumes from them); 0: at the end'],
  sample_every: ['Sample grid every', 'steps between the sample grids shown here; 0: only at the end'],
  sample_count: ['Images per grid', 'how many samples each grid shows'],
  default_steps: ['Default sampling steps', 'what the new checkpoint generates with unless asked'],
  default_sampler: ['Default sampler', 'the new checkpoint\'s sampler unless asked'],
  default_eta: ['Default eta', 'DDIM noise of the new checkpoint'],
  guidance_scale: ['Default guidance', 'class-conditional checkpoints: how strongly images follow the label'],
  compile: ['Compile the network', 'torch.compile: faster steps after a slow start'],
  channels_last: ['Channels-last memory', 'faster convolutions on some devices'],
  seed: ['Seed', 'the run\'s random seed'],
};
// The page's default for "sample every": five grids over the run (the service's is 0: none
// until the end, which leaves a watched run without pictures).
const GRIDS_PER_RUN = 5;

function variant(prop) {
  if (!prop.anyOf) return { schema: prop, nullable: false };
  const real = prop.anyOf.find((v) => v.type !== 'null') || {};
  return { schema: { ...real, default: prop.default, description: prop.description }, nullable: prop.anyOf.some((v) => v.type === 'null') };
}

/** One form control for schema property `name`; returns {wrap, read()} */
function control(name, prop) {
  const { schema, nullable } = variant(prop);
  const id = `t-opt-${name}`;
  const field = `options.${name}`;
  const wrap = document.createElement('div');
  wrap.className = 'field';
  const label = document.createElement('label');
  label.htmlFor = id;
  const [words, about] = WORDS[name] || [human(name), schema.description || ''];
  label.textContent = words;
  const rule = numberRule(prop);
  const limits = rule && rule.max !== undefined && rule.max < 1e6 ? limitText(rule) : '';
  const hintText = [about, limits].filter(Boolean).join('; ');
  let hint = null;
  if (hintText) {
    hint = document.createElement('span');
    hint.className = 'hint option-hint';
    hint.id = `${id}-hint`;
    hint.textContent = hintText;
  }
  let input;
  let read;
  const def = prop.default;
  if (Array.isArray(schema.enum)) {
    input = document.createElement('select');
    for (const v of schema.enum) {
      const o = document.createElement('option');
      o.value = String(v);
      o.textContent = String(v);
      input.append(o);
    }
    input.value = String(def ?? schema.enum[0]);
    read = () => (typeof schema.enum[0] === 'number' ? Number(input.value) : input.value);
  } else if (schema.type === 'boolean') {
    input = document.createElement('input');
    input.type = 'checkbox';
    input.checked = Boolean(def);
    read = () => input.checked;
    wrap.classList.add('check');
  } else if (schema.type === 'integer' || schema.type === 'number') {
    input = document.createElement('input');
    input.type = 'number';
    input.inputMode = schema.type === 'integer' ? 'numeric' : 'decimal';
    input.step = schema.type === 'integer' ? '1' : 'any';
    for (const [attr, key] of [['min', 'minimum'], ['max', 'maximum']]) if (schema[key] !== undefined) input[attr] = schema[key];
    input.value = def === null || def === undefined ? '' : String(def);
    if (nullable) input.placeholder = 'none';
    read = () => (input.value.trim() === '' ? (nullable ? null : undefined) : Number(input.value));
  } else if (schema.type === 'array') {
    input = document.createElement('input');
    input.type = 'text';
    input.value = Array.isArray(def) ? def.join(', ') : '';
    read = () => input.value.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  } else if (schema.type === 'object') {
    input = document.createElement('textarea');
    input.rows = 2;
    input.spellcheck = false;
    input.value = JSON.stringify(def || {});
    read = () => { try { return JSON.parse(input.value || '{}'); } catch { return input.value; } };
  } else {
    input = document.createElement('input');
    input.type = 'text';
    input.spellcheck = false;
    input.value = def ?? '';
    read = () => input.value;
  }
  input.id = id;
  input.name = field;
  if (hint) input.setAttribute('aria-describedby', hint.id);
  if (schema.type === 'boolean') {
    label.prepend(input);
    wrap.append(label);
  } else {
    wrap.append(label, input);
  }
  if (hint) wrap.append(hint);
  const set = (v) => {
    if (v === undefined) return;
    if (input.type === 'checkbox') input.checked = Boolean(v);
    else if (schema.type === 'array') input.value = Array.isArray(v) ? v.join(', ') : '';
    else if (schema.type === 'object') input.value = JSON.stringify(v || {});
    else input.value = v === null ? '' : String(v);
  };
  return { name, wrap, read, input, def, rule, set };
}

export class TrainView {
  constructor(root, { onPublished }) {
    this.root = root;
    this.$ = (id) => root.querySelector(`#${id}`);
    this.form = this.$('train-form');
    this.controls = [];
    this.built = false;
    this.follower = null;
    this.jobId = null;
    this.onPublished = onPublished;
    this.chart = new LossChart(this.$('train-chart'));
    this.$('token-form').addEventListener('submit', (e) => { e.preventDefault(); this.saveToken(); });
    clearOnEdit(this.form);
    this.$('token-forget').addEventListener('click', () => { auth.admin = ''; this.tokenState(); });
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.submit(); });
    this.$('train-cancel').addEventListener('click', () => this.cancel());
  }

  async show(params = {}) {
    this.tokenState();
    if (!this.built) await this.build();
    await this.fillResume();
    if (params.job && params.job !== this.jobId) {
      if (/^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$/.test(params.job)) {
        this.fillNext = true; // opened by its link: the form takes the run's settings
        this.follow(params.job);
      } else {
        this.follow(null);
        this.setStatus('unknown');
        this.showError(`“${params.job.slice(0, 60)}” is not a job id: a run's link looks like #/train?job=0b7c6f0e-6a51-4c55-9d1b-3f2a3c1e8d11.`);
      }
    }
  }

  tokenState() {
    const has = Boolean(auth.admin);
    this.$('token-state').textContent = has
      ? 'An admin token is set for this browser session.'
      : 'Training needs the admin token (printed by ddpm serve, in data/admin_token). It is kept for this browser session only.';
    this.$('token-forget').hidden = !has;
    this.$('t-token').value = '';
    this.$('t-token').placeholder = has ? '•••••••• (set)' : '';
    this.root.dataset.token = has ? 'set' : 'none';
  }

  /** Check the token with the service (GET /admin/token) before keeping it. */
  async saveToken() {
    const v = this.$('t-token').value.trim();
    const err = this.$('err-token');
    err.hidden = true;
    const refuse = (text) => { err.textContent = text; err.hidden = false; this.$('t-token').focus(); };
    if (!v) { refuse('Enter the admin token.'); return; }
    const btn = this.$('token-save');
    btn.disabled = true;
    try {
      const res = await fetch('/admin/token', { headers: { Authorization: `Bearer ${v}` }, cache: 'no-store' });
      if (res.status === 204) {
        auth.admin = v;
        this.tokenState();
        return;
      }
      let detail = '';
      try { detail = (await res.json()).detail || ''; } catch { /* no body */ }
      refuse(res.status === 403 || res.status === 401
        ? `The service refused this token${detail ? ` (${detail})` : ''}: it is not the admin token. Nothing was kept.`
        : `The token could not be checked (HTTP ${res.status}${detail ? `: ${detail}` : ''}).`);
    } catch (e) {
      refuse(`The token could not be checked: ${e.message}`);
    } finally {
      btn.disabled = false;
    }
  }

  async build() {
    const schema = await schemaOf('TrainOptions');
    const props = (schema && schema.properties) || {};
    const primary = this.$('train-fields');
    const more = this.$('train-more');
    for (const name of [...PRIMARY, ...Object.keys(props).filter((n) => !PRIMARY.includes(n))]) {
      if (!props[name]) continue;
      const c = control(name, props[name]);
      (PRIMARY.includes(name) ? primary : more).append(c.wrap);
      this.controls.push(c);
    }
    // "Sample every": a few grids over the run, following the steps until it is edited.
    const steps = this.control('steps');
    const every = this.control('sample_every');
    if (steps && every) {
      const follow = () => {
        const n = Number(steps.input.value);
        if (every.input.dataset.edited || !Number.isInteger(n) || n < 1) return;
        every.input.value = String(Math.max(1, Math.round(n / GRIDS_PER_RUN)));
      };
      every.input.addEventListener('input', () => { every.input.dataset.edited = '1'; });
      steps.input.addEventListener('input', follow);
      follow();
    }
    this.built = true;
  }

  control(name) { return this.controls.find((c) => c.name === name) || null; }

  /** Put a run's request into the form (a run opened by its link). */
  fillFrom(r) {
    if (r.name) this.$('t-name').value = r.name;
    const sel = this.$('t-resume');
    if (r.resume_from && [...sel.options].some((o) => o.value === r.resume_from)) sel.value = r.resume_from;
    else sel.value = '';
    const opts = r.options || {};
    for (const c of this.controls) {
      c.set(c.name in opts ? opts[c.name] : c.def);
      if (c.name === 'sample_every') c.input.dataset.edited = '1';
    }
    clearErrors(this.form, this.$('train-errors'));
  }

  /** Every numeric option checked at once against its schema limits. */
  problems() {
    const out = [];
    for (const c of this.controls) {
      if (!c.rule || c.input.type !== 'number') continue;
      const why = checkNumber(c.input.value, c.rule);
      if (why) out.push({ field: c.input.name, reason: why });
    }
    return out;
  }

  async fillResume() {
    const sel = this.$('t-resume');
    const keep = sel.value;
    const none = document.createElement('option');
    none.value = '';
    none.textContent = 'a new network';
    const opts = [none];
    try {
      for (const c of await request('/checkpoints')) {
        for (const v of c.versions) {
          const o = document.createElement('option');
          o.value = `${c.name}@${v.version}`;
          o.textContent = `${c.name}@${v.version} (fine-tune)`;
          opts.push(o);
        }
      }
    } catch { /* the list is a convenience */ }
    sel.replaceChildren(...opts);
    sel.value = opts.some((o) => o.value === keep) ? keep : '';
  }

  body() {
    const options = {};
    for (const c of this.controls) {
      const v = c.read();
      if (v === undefined) continue;
      if (JSON.stringify(v) !== JSON.stringify(c.def)) options[c.name] = v; // only what was changed
    }
    const body = { name: this.$('t-name').value.trim(), options };
    if (this.$('t-resume').value) body.resume_from = this.$('t-resume').value;
    return body;
  }

  async submit() {
    const general = this.$('train-errors');
    clearErrors(this.form, general);
    const problems = this.problems();
    if (problems.length) {
      const more = this.$('train-more');
      if (problems.some((p) => more.contains(this.form.elements[p.field]))) more.closest('details').open = true;
      showProblems(this.form, problems, general);
      return null;
    }
    if (!auth.admin) {
      const err = this.$('err-token');
      err.textContent = 'Enter the admin token first.';
      err.hidden = false;
      this.$('t-token').focus();
      return null;
    }
    const btn = this.$('train-submit');
    btn.disabled = true;
    try {
      const doc = await request('/train', { method: 'POST', body: this.body(), admin: true });
      remember(doc.id, 'train');
      history.pushState(null, '', `#/train?job=${doc.id}`);
      this.fillNext = false;
      this.follow(doc.id);
      return doc;
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        const e = this.$('err-token');
        e.textContent = `${err.message} (HTTP ${err.status})`;
        e.hidden = false;
        this.$('t-token').focus();
      } else {
        showErrors(this.form, err, general);
      }
      return null;
    } finally {
      btn.disabled = false;
    }
  }

  follow(id) {
    if (this.follower) this.follower.stop();
    this.follower = null;
    this.jobId = id;
    this.replayed = null;
    const $ = this.$;
    $('train-empty').hidden = true;
    $('train-body').hidden = false;
    $('train-result').hidden = true;
    $('train-error').hidden = true;
    $('train-previews').replaceChildren();
    $('train-previews-empty').hidden = false;
    $('train-progress').value = 0;
    $('train-progress-text').textContent = '';
    $('train-note').hidden = true;
    $('train-job-title').textContent = id ? `Training run ${id.slice(0, 8)}` : 'Training run';
    this.chart.reset();
    this.setStatus('…');
    if (!id) return;
    let first = true;
    this.follower = followJob(id, {
      doc: (d) => {
        if (first) {
          first = false;
          // A finished run: its kept events are replayed; of its grids only the newest
          // file is kept, so only the last one is shown (with the published samples).
          if (TERMINAL.has(d.status)) this.replayed = [];
          if (this.fillNext) { this.fillNext = false; this.fillFrom(d.request || {}); }
        }
        this.renderDoc(d);
      },
      status: (s) => this.setStatus(s),
      progress: (p) => this.renderProgress(p),
      preview: (p) => { if (this.replayed) this.replayed.push(p); else this.addPreview(p); },
      done: (d) => this.renderDone(d),
      error: (e) => {
        this.setStatus('unknown');
        this.showError(e.status === 404 ? `Run ${id} is unknown or has expired (finished jobs are kept for a day).` : e.message);
      },
    }, { replay: true });
  }

  setStatus(s) {
    const pill = this.$('train-status');
    pill.textContent = s;
    pill.dataset.status = s;
    this.$('train-job').dataset.status = s;
    this.$('train-cancel').hidden = !(s === 'queued' || s === 'running');
  }

  renderDoc(d) {
    const r = d.request || {};
    const o = r.options || {};
    this.$('train-summary').textContent = `${r.name} · ${o.steps ?? 1000} steps` + (r.resume_from ? ` from ${r.resume_from}` : '');
    if (!TERMINAL.has(d.status)) this.setStatus(d.status);
    if (d.status === 'queued') this.$('train-progress-text').textContent = d.queue_position ? `Queued: ${d.queue_position} ahead` : 'Queued: next in line';
    if (d.progress && d.progress.total) this.renderProgress(d.progress);
  }

  renderProgress(p) {
    if (!p.total) return;
    this.$('train-progress').value = Math.min(1, p.step / p.total);
    const bits = [`step ${p.step}/${p.total}`];
    if (typeof p.loss === 'number') bits.push(`loss ${p.loss.toFixed(4)}`);
    if (typeof p.lr === 'number') bits.push(`lr ${p.lr.toExponential(2)}`);
    if (typeof p.images_per_sec === 'number') bits.push(`${Math.round(p.images_per_sec)} images/s`);
    this.$('train-progress-text').textContent = bits.join(' · ');
    this.chart.push(p);
  }

  async addPreview(p, caption = `step ${p.step}`) {
    const list = this.$('train-previews');
    const li = document.createElement('li');
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    img.alt = `Samples at step ${p.step}`;
    const cap = document.createElement('figcaption');
    cap.textContent = caption;
    // A grid of small images: a click (or Enter) shows it across the panel.
    const zoom = document.createElement('button');
    zoom.type = 'button';
    zoom.className = 'enlarge';
    zoom.setAttribute('aria-label', `Enlarge the samples at step ${p.step}`);
    zoom.setAttribute('aria-pressed', 'false');
    zoom.append(img);
    zoom.addEventListener('click', () => {
      const large = li.classList.toggle('large');
      zoom.setAttribute('aria-pressed', String(large));
      zoom.setAttribute('aria-label', `${large ? 'Shrink' : 'Enlarge'} the samples at step ${p.step}`);
    });
    fig.append(zoom, cap);
    li.append(fig);
    li.dataset.step = p.step;
    list.prepend(li);
    while (list.children.length > 12) list.lastElementChild.remove();
    this.$('train-previews-empty').hidden = true;
    try { await setSource(img, p.url); } catch { li.remove(); }
  }

  async renderDone(d) {
    this.renderDoc(d);
    this.setStatus(d.status);
    const replayed = this.replayed;
    this.replayed = null;
    if (replayed) {
      // Its events expire (DDPM_EVENTS_TTL) but a published run keeps its curve.
      const curve = (d.result || {}).loss_curve;
      if (!this.chart.points.length && Array.isArray(curve) && curve.length) {
        const total = (d.progress || {}).total;
        for (const [step, loss, lr] of curve) this.chart.push({ step, loss, lr, total });
      }
      if (!this.chart.points.length) {
        this.chart.setEmpty('no curve: a run\'s events are kept only DDPM_EVENTS_TTL (10 min) after it');
      }
      const last = replayed[replayed.length - 1];
      if (last && d.status !== 'succeeded') this.addPreview(last, `step ${last.step} (the last grid)`);
    }
    const p = d.progress || {};
    if (d.status === 'canceled') {
      this.$('train-progress-text').textContent = '';
      this.note(p.step ? `Canceled at step ${p.step} of ${p.total}.` : 'Canceled before it started.');
      return;
    }
    if (d.status !== 'succeeded') {
      const err = d.error || {};
      this.showError(`Failed: ${err.type ? `${err.type}: ` : ''}${err.message || ''}`);
      return;
    }
    const res = d.result || {};
    const ref = res.checkpoint || '';
    const [name, version] = ref.split('@');
    if (replayed && name && version) {
      // The published version's own sample grid: kept with the checkpoint.
      this.addPreview({ step: p.total || p.step, url: `/checkpoints/${encodeURIComponent(name)}/${encodeURIComponent(version)}/samples.png` },
        `${ref}: the published samples`);
    }
    const box = this.$('train-result');
    box.replaceChildren();
    const m = d.metrics || {};
    box.append(`Published ${ref}` + (typeof res.final_loss === 'number' ? `, final loss ${res.final_loss.toFixed(4)}` : '') +
      (m.run_seconds ? `, in ${duration(m.run_seconds)}` : '') + '. ');
    const a = document.createElement('a');
    a.id = 'train-generate-link';
    a.href = `#/generate?checkpoint=${encodeURIComponent(name)}&version=${encodeURIComponent(version)}`;
    a.textContent = `Generate with ${ref}`;
    box.append(a);
    box.hidden = false;
    this.$('train-progress').value = 1;
    if (this.onPublished) this.onPublished(ref);
    this.fillResume();
  }

  showError(text) {
    const e = this.$('train-error');
    e.textContent = text;
    e.hidden = false;
  }

  note(text) {
    const n = this.$('train-note');
    n.textContent = text;
    n.hidden = false;
  }

  async cancel() {
    if (!this.jobId) return;
    try {
      await request(`/jobs/${this.jobId}/cancel`, { method: 'POST' });
      this.$('train-progress-text').textContent = 'Cancel requested: it stops after its current step';
    } catch (e) {
      this.showError(e.message);
    }
  }
}

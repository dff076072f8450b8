// Admin: the training form (built from the service's TrainOptions schema), the token
// (this browser session only), and a live view of the run: loss and learning-rate curve
// from the progress events, the sample grids as they are written, the new version.

import { auth, request, schemaOf, setSource, TERMINAL } from './api.js';
import { LossChart } from './chart.js';
import { clearErrors, showErrors } from './forms.js';
import { remember } from './history.js';
import { followJob } from './sse.js';
import { duration } from './jobview.js';

// Shown first; the rest goes under "More options".
const PRIMARY = ['dataset', 'preset', 'image_size', 'channels', 'class_cond', 'steps', 'batch_size', 'lr',
  'warmup', 'schedule', 'timesteps', 'sample_every', 'sample_count', 'default_steps', 'default_sampler',
  'guidance_scale'];

const human = (name) => name.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());

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
  label.textContent = human(name);
  if (schema.description) {
    const hint = document.createElement('span');
    hint.className = 'hint';
    hint.textContent = ` (${schema.description})`;
    label.append(hint);
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
  if (schema.type === 'boolean') {
    label.prepend(input);
    wrap.append(label);
  } else {
    wrap.append(label, input);
  }
  return { name, wrap, read, input, def };
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
    this.$('token-forget').addEventListener('click', () => { auth.admin = ''; this.tokenState(); });
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.submit(); });
    this.$('train-cancel').addEventListener('click', () => this.cancel());
  }

  async show(params = {}) {
    this.tokenState();
    if (!this.built) await this.build();
    await this.fillResume();
    if (params.job && params.job !== this.jobId) this.follow(params.job);
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

  saveToken() {
    const v = this.$('t-token').value.trim();
    const err = this.$('err-token');
    err.hidden = true;
    if (!v) { err.textContent = 'Enter the admin token.'; err.hidden = false; return; }
    auth.admin = v;
    this.tokenState();
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
    this.built = true;
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
    this.jobId = id;
    const $ = this.$;
    $('train-empty').hidden = true;
    $('train-body').hidden = false;
    $('train-result').hidden = true;
    $('train-error').hidden = true;
    $('train-previews').replaceChildren();
    $('train-previews-empty').hidden = false;
    $('train-progress').value = 0;
    $('train-progress-text').textContent = '';
    $('train-job-title').textContent = `Training run ${id.slice(0, 8)}`;
    this.chart.reset();
    this.setStatus('…');
    this.follower = followJob(id, {
      doc: (d) => this.renderDoc(d),
      status: (s) => this.setStatus(s),
      progress: (p) => this.renderProgress(p),
      preview: (p) => this.addPreview(p),
      done: (d) => this.renderDone(d),
      error: (e) => this.showError(e.message),
    });
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

  async addPreview(p) {
    const list = this.$('train-previews');
    const li = document.createElement('li');
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    img.alt = `Samples at step ${p.step}`;
    const cap = document.createElement('figcaption');
    cap.textContent = `step ${p.step}`;
    fig.append(img, cap);
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
    if (d.status !== 'succeeded') {
      const err = d.error || {};
      this.showError(`${d.status === 'canceled' ? 'Canceled' : 'Failed'}: ${err.message || ''}`);
      return;
    }
    const res = d.result || {};
    const ref = res.checkpoint || '';
    const [name, version] = ref.split('@');
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

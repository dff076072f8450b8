// The generate form, built from the chosen checkpoint's config (GET /checkpoints) and the
// service's own schema (the samplers it accepts), and the job panel it feeds.

import { enumOf, request } from './api.js';
import { clearErrors, showErrors } from './forms.js';
import { remember } from './history.js';
import { JobView } from './jobview.js';

const option = (value, text, selected = false) => {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  o.selected = selected;
  return o;
};

/** A random seed below 2^52: exact as a JavaScript number. */
export function randomSeed() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (words[0] % 2 ** 20) * 2 ** 32 + words[1];
}

export class GenerateView {
  constructor(root) {
    this.root = root;
    this.$ = (id) => root.querySelector(`#${id}`);
    this.form = this.$('gen-form');
    this.checkpoints = [];
    this.samplers = ['ddpm', 'ddim'];
    this.configKey = null;
    this.job = new JobView(this.$('job'), { onAlone: (doc, image) => this.alone(doc, image) });
    this.$('f-checkpoint').addEventListener('change', () => { this.fillVersions(); this.applyConfig(); });
    this.$('f-version').addEventListener('change', () => this.applyConfig());
    this.$('f-sampler').addEventListener('change', () => this.samplerChanged());
    this.$('f-label').addEventListener('change', () => this.labelChanged());
    this.$('seed-random').addEventListener('click', () => { this.$('f-seed').value = String(randomSeed()); });
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.submit(); });
  }

  /** params: {checkpoint, version} to preselect, or {job} to follow a job. */
  async show(params = {}) {
    await this.load(params);
    if (params.job && params.job !== this.job.id) this.job.attach(params.job, { preview: this.$('f-preview').checked });
  }

  async load(params = {}) {
    this.samplers = await enumOf('GenerateRequest', 'sampler', this.samplers);
    this.checkpoints = await request('/checkpoints');
    const sel = this.$('f-checkpoint');
    const want = params.checkpoint || sel.value;
    sel.replaceChildren(...this.checkpoints.map((c) => option(c.name, c.name, c.name === want)));
    if (!this.checkpoints.some((c) => c.name === want) && this.checkpoints.length) {
      // Nothing chosen yet: a built-in checkpoint (the service's default ships as one).
      const builtin = this.checkpoints.find((c) => c.versions.some((v) => v.builtin));
      sel.value = (builtin || this.checkpoints[0]).name;
    }
    this.fillVersions(params.version);
    this.applyConfig();
  }

  current() {
    return this.checkpoints.find((c) => c.name === this.$('f-checkpoint').value) || null;
  }

  fillVersions(wanted) {
    const c = this.current();
    const sel = this.$('f-version');
    const keep = wanted || sel.value || 'latest';
    if (!c) { sel.replaceChildren(); return; }
    const items = [option('latest', `latest (${c.latest})`)];
    for (const v of [...c.versions].reverse()) items.push(option(v.version, v.version));
    sel.replaceChildren(...items);
    sel.value = items.some((o) => o.value === keep) ? keep : 'latest';
  }

  version() {
    const c = this.current();
    if (!c) return null;
    const v = this.$('f-version').value;
    return c.versions.find((x) => x.version === (v === 'latest' ? c.latest : v)) || null;
  }

  /** Defaults and conditional fields from the selected version's config. */
  applyConfig() {
    const v = this.version();
    const cfg = (v && v.config) || {};
    const key = `${this.$('f-checkpoint').value}@${v && v.version}`;
    const changed = key !== this.configKey;
    this.configKey = key;
    const T = cfg.schedule && cfg.schedule.num_train_timesteps;
    const steps = this.$('f-steps');
    if (T) steps.max = T; else steps.removeAttribute('max');
    this.$('steps-default').textContent = cfg.default_steps ? `(default ${cfg.default_steps})` : '';
    const sampler = this.$('f-sampler');
    const prevSampler = sampler.value;
    sampler.replaceChildren(...this.samplers.map((s) => option(s, s === cfg.default_sampler ? `${s} (default)` : s)));
    if (changed) {
      if (cfg.default_steps) steps.value = cfg.default_steps;
      sampler.value = this.samplers.includes(cfg.default_sampler) ? cfg.default_sampler : this.samplers[0];
      this.$('f-eta').value = cfg.default_eta ?? 0;
    } else if (prevSampler) {
      sampler.value = prevSampler;
    }
    // Labels and guidance: class-conditional checkpoints only.
    const n = cfg.num_classes || (cfg.unet && cfg.unet.num_classes) || 0;
    this.$('cond-fields').hidden = !n;
    if (changed) {
      const names = Array.isArray(cfg.class_names) ? cfg.class_names : [];
      const labels = [option('', 'any (unconditional)')];
      for (let i = 0; i < n; i++) labels.push(option(String(i), names[i] && names[i] !== String(i) ? `${i}: ${names[i]}` : String(i)));
      this.$('f-label').replaceChildren(...labels);
      const g = cfg.default_guidance_scale ?? 1;
      this.$('f-guidance').value = g;
      this.$('guidance-default').textContent = `(default ${g})`;
    }
    this.samplerChanged();
    this.labelChanged();
  }

  samplerChanged() {
    this.$('eta-field').hidden = this.$('f-sampler').value !== 'ddim';
  }

  labelChanged() {
    // Guidance applies to a labelled (class-conditional) sample only.
    this.$('f-guidance').disabled = this.$('f-label').value === '';
  }

  body() {
    const $ = this.$;
    const num = (id) => {
      const v = $(id).value.trim();
      if (v === '') return undefined;
      // A large integer (a seed) goes as its digits, which a number would round.
      return /^\d+$/.test(v) && !Number.isSafeInteger(Number(v)) ? v : Number(v);
    };
    const name = $('f-checkpoint').value;
    const version = $('f-version').value;
    const body = {
      checkpoint: version === 'latest' ? name : `${name}@${version}`,
      count: num('f-count'),
      // No seed given: the page picks one (and the job echoes it), below 2^53.
      seed: num('f-seed') ?? randomSeed(),
      steps: num('f-steps'),
      sampler: $('f-sampler').value,
      use_ema: $('f-ema').checked,
    };
    if (body.sampler === 'ddim') body.eta = num('f-eta');
    if (!$('cond-fields').hidden && $('f-label').value !== '') {
      body.label = Number($('f-label').value);
      body.guidance_scale = num('f-guidance');
    }
    if ($('f-trajectory').checked) body.trajectory_frames = Math.max(1, Math.min(32, body.steps || 32));
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    return body;
  }

  async submit(body = this.body()) {
    const general = this.$('gen-errors');
    clearErrors(this.form, general);
    const btn = this.$('gen-submit');
    btn.disabled = true;
    try {
      const doc = await request('/generate', { method: 'POST', body });
      remember(doc.id, 'generate');
      this.job.attach(doc.id, { preview: this.$('f-preview').checked });
      history.pushState(null, '', `#/job/${doc.id}`);
      return doc;
    } catch (err) {
      showErrors(this.form, err, general);
      return null;
    } finally {
      btn.disabled = false;
    }
  }

  /** Image i of a job with seed s is the count-1 job with seed s+i: submit that. */
  alone(doc, image) {
    const r = doc.request || {};
    const body = {
      checkpoint: r.checkpoint,
      count: 1,
      seed: image.seed,
      steps: r.steps,
      sampler: r.sampler,
      use_ema: r.use_ema,
    };
    if (r.sampler === 'ddim') body.eta = r.eta;
    if (r.label !== null && r.label !== undefined) {
      body.label = r.label;
      body.guidance_scale = r.guidance_scale;
    }
    return this.submit(body);
  }
}

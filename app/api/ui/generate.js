// The generate form, built from the chosen checkpoint's config (GET /checkpoints) and the
// service's own schema (the samplers it accepts, every field's limits), and the job panel
// it feeds. The form follows the job on screen: opening a job fills the form with its
// settings, so that Generate makes it again.

import { enumOf, request, schemaOf } from './api.js';
import { checkNumber, clearErrors, clearOnEdit, limitText, numberRule, showErrors, showProblems } from './forms.js';
import { remember } from './history.js';
import { JobView } from './jobview.js';

const option = (value, text, selected = false) => {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  o.selected = selected;
  return o;
};

const JOB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// What each sampler is, in a line (the service's schema lists which it accepts).
const SAMPLER_HINTS = {
  ddpm: 'DDPM: the original stochastic sampler; needs many steps (hundreds) for its best images.',
  ddim: 'DDIM: deterministic at eta 0 (the same seed, the same image at any step count); eta adds noise.',
  'dpm++2m': 'DPM-Solver++ 2M: deterministic, good images in 15-25 steps.',
  'dpm++3m': 'DPM-Solver++ 3M: deterministic, third order; like 2M, sometimes sharper.',
  'dpm++2m-sde': 'DPM-Solver++ 2M SDE: stochastic, good images in 10-20 steps.',
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
    this.rules = {};
    this.configKey = null;
    this.job = new JobView(this.$('job'), {
      onAlone: (doc, image) => this.alone(doc, image),
      onUse: (doc) => this.fillFrom(doc.request || {}),
      onDoc: (doc) => this.jobShown(doc),
    });
    this.$('f-checkpoint').addEventListener('change', () => { this.fillVersions(); this.applyConfig(); });
    this.$('f-version').addEventListener('change', () => this.applyConfig());
    this.$('f-sampler').addEventListener('change', () => this.samplerChanged());
    this.$('f-label').addEventListener('change', () => this.labelChanged());
    this.$('f-format').addEventListener('change', () => this.formatChanged());
    this.$('seed-random').addEventListener('click', () => { this.$('f-seed').value = String(randomSeed()); });
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.submit(); });
    clearOnEdit(this.form);
  }

  /** params: {checkpoint, version} to preselect (a fresh form), or {job} to follow a job. */
  async show(params = {}) {
    await this.load(params);
    if (params.job) {
      if (params.job === this.job.id) return;
      if (!JOB_ID.test(params.job)) { this.job.invalid(params.job); return; }
      this.fillNext = true; // a job opened by its link: the form takes its settings
      this.job.attach(params.job, { preview: this.$('f-preview').checked });
    } else if (params.checkpoint) {
      this.job.detach(); // "Generate with this": a new job, not the last one
    }
  }

  async load(params = {}) {
    this.samplers = await enumOf('GenerateRequest', 'sampler', this.samplers);
    const formats = await enumOf('GenerateRequest', 'output_format', ['png']);
    const fmt = this.$('f-format');
    const chosen = fmt.value;
    fmt.replaceChildren(...formats.map((f) => option(f, f, f === chosen)));
    const schema = await schemaOf('GenerateRequest');
    const props = (schema && schema.properties) || {};
    for (const name of ['count', 'seed', 'steps', 'eta', 'guidance_scale', 'output_quality']) this.rules[name] = numberRule(props[name]);
    if (props.output_quality && props.output_quality.default !== undefined && this.$('f-quality').value === '') {
      this.$('f-quality').value = String(props.output_quality.default);
    }
    this.formatChanged();
    this.$('count-limits').textContent = this.rules.count ? `(${limitText(this.rules.count)})` : '';
    if (this.rules.output_quality) this.$('quality-limits').textContent = `(${limitText(this.rules.output_quality)})`;
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

  /** The steps rule: the schema's, and at most the checkpoint's T. */
  stepsRule() {
    const cfg = (this.version() || {}).config || {};
    const T = cfg.schedule && cfg.schedule.num_train_timesteps;
    const rule = { ...(this.rules.steps || { integer: true, min: 1 }) };
    if (T && (rule.max === undefined || T < rule.max)) rule.max = T;
    return rule;
  }

  /** Defaults and conditional fields from the selected version's config. */
  applyConfig() {
    const v = this.version();
    const cfg = (v && v.config) || {};
    const key = `${this.$('f-checkpoint').value}@${v && v.version}`;
    const changed = key !== this.configKey;
    this.configKey = key;
    const steps = this.$('f-steps');
    const rule = this.stepsRule();
    if (rule.max) steps.max = rule.max; else steps.removeAttribute('max');
    const limits = limitText(rule);
    this.$('steps-default').textContent = `(${[limits, cfg.default_steps ? `default ${cfg.default_steps}` : ''].filter(Boolean).join(', ')})`;
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
      const labels = [option('', 'any')];
      for (let i = 0; i < n; i++) labels.push(option(String(i), names[i] && names[i] !== String(i) ? `${i}: ${names[i]}` : String(i)));
      this.$('f-label').replaceChildren(...labels);
      const g = cfg.default_guidance_scale ?? 1;
      this.$('f-guidance').value = g;
      this.$('guidance-default').textContent = `(${limitText(this.rules.guidance_scale) || 'at least 0'}, default ${g})`;
    }
    this.samplerChanged();
    this.labelChanged();
  }

  samplerChanged() {
    const s = this.$('f-sampler').value;
    this.$('eta-field').hidden = s !== 'ddim';
    this.$('sampler-hint').textContent = SAMPLER_HINTS[s] || '';
  }

  formatChanged() {
    // Quality applies to the lossy formats only.
    this.$('quality-field').hidden = this.$('f-format').value === 'png';
  }

  labelChanged() {
    // Guidance applies to a labelled (class-conditional) sample only.
    const none = this.$('f-label').value === '';
    this.$('f-guidance').disabled = none;
    this.$('guidance-hint').textContent = none
      ? 'Guidance needs a label: pick one to steer the images towards it.'
      : 'How strongly the images follow the label (1: plain conditional; higher: more typical, less varied).';
  }

  /** Put a job's request (its normalised settings) into the form. */
  fillFrom(r) {
    const $ = this.$;
    const [name, version] = String(r.checkpoint || '').split('@');
    if (this.checkpoints.some((c) => c.name === name)) {
      $('f-checkpoint').value = name;
      this.fillVersions(version || 'latest');
      this.applyConfig();
    }
    const set = (id, v) => { if (v !== undefined && v !== null) $(id).value = String(v); };
    set('f-count', r.count);
    set('f-seed', r.seed);
    set('f-steps', r.steps);
    if (r.sampler && this.samplers.includes(r.sampler)) $('f-sampler').value = r.sampler;
    set('f-eta', r.eta);
    if (!$('cond-fields').hidden) {
      $('f-label').value = r.label === null || r.label === undefined ? '' : String(r.label);
      set('f-guidance', r.guidance_scale);
    }
    if (typeof r.use_ema === 'boolean') $('f-ema').checked = r.use_ema;
    $('f-trajectory').checked = Boolean(r.trajectory_frames);
    if (r.output_format) $('f-format').value = r.output_format;
    set('f-quality', r.output_quality);
    this.formatChanged();
    this.samplerChanged();
    this.labelChanged();
    clearErrors(this.form, $('gen-errors'));
  }

  /** The job panel shows a job's document: the form follows a job opened by its link. */
  jobShown(doc) {
    if (this.fillNext && doc.kind === 'generate') {
      this.fillNext = false;
      this.fillFrom(doc.request || {});
    }
  }

  /** Every field checked at once, with the schema's limits: [{field, reason}]. */
  problems() {
    const $ = this.$;
    const out = [];
    const check = (field, id, rule, opts) => {
      if ($(id).closest('[hidden]') || $(id).disabled) return;
      const why = checkNumber($(id).value, rule, opts);
      if (why) out.push({ field, reason: why });
    };
    check('count', 'f-count', this.rules.count, { required: true });
    check('seed', 'f-seed', this.rules.seed);
    check('steps', 'f-steps', this.stepsRule());
    check('eta', 'f-eta', this.rules.eta);
    check('guidance_scale', 'f-guidance', this.rules.guidance_scale);
    check('output_quality', 'f-quality', this.rules.output_quality, { required: true });
    return out;
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
    body.output_format = $('f-format').value;
    if (body.output_format !== 'png') body.output_quality = num('f-quality');
    if ($('f-trajectory').checked) body.trajectory_frames = Math.max(1, Math.min(32, body.steps || 32));
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    return body;
  }

  async submit(body = null) {
    const general = this.$('gen-errors');
    clearErrors(this.form, general);
    if (body === null) {
      const problems = this.problems();
      if (problems.length) { showProblems(this.form, problems, general); return null; }
      body = this.body();
    }
    const btn = this.$('gen-submit');
    btn.disabled = true;
    try {
      const doc = await request('/generate', { method: 'POST', body });
      remember(doc.id, 'generate');
      this.job.attach(doc.id, { preview: this.$('f-preview').checked });
      history.pushState(null, '', `#/job/${doc.id}`);
      this.fillFrom(doc.request || {}); // the form says what runs (the seed it was given)
      this.job.reveal();
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
      output_format: r.output_format || 'png',
    };
    if (body.output_format !== 'png') body.output_quality = r.output_quality;
    if (r.sampler === 'ddim') body.eta = r.eta;
    if (r.label !== null && r.label !== undefined) {
      body.label = r.label;
      body.guidance_scale = r.guidance_scale;
    }
    return this.submit(body);
  }
}

// The registry: every checkpoint and version with its sample grid, config, provenance
// and recorded scores.

import { request, setSource } from './api.js';

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== '') node.append(c);
  return node;
}

function dl(rows) {
  const list = el('dl', { class: 'facts' });
  for (const [k, v] of rows) {
    if (v === undefined || v === null || v === '') continue;
    list.append(el('dt', { text: k }), el('dd', { text: String(v) }));
  }
  return list;
}

const fmt = (x, digits = 3) => (typeof x === 'number' ? Number(x.toPrecision(digits)).toString() : x);

function scoresTable(metrics) {
  const score = metrics && metrics.digits_score;
  if (!score) return null;
  const table = el('table', { class: 'scores' });
  const cap = `Digits score: ${score.count ?? ''} samples, ${score.steps ?? ''} ${score.sampler ?? ''} steps` +
    (score.guidance ? `, guidance ${score.guidance}` : '');
  table.append(el('caption', { text: cap }));
  table.append(el('thead', {}, el('tr', {}, ...['', 'IS (max 10)', 'confidence', 'label accuracy'].map((h) => el('th', { scope: 'col', text: h })))));
  const body = el('tbody');
  for (const [key, name] of [['generated', 'generated'], ['real', 'held-out real digits'], ['noise', 'pure noise']]) {
    const r = score[key];
    if (!r) continue;
    body.append(el('tr', {},
      el('th', { scope: 'row', text: name }),
      el('td', { text: fmt(r.inception_score) }),
      el('td', { text: fmt(r.confidence) }),
      el('td', { text: r.label_accuracy === null || r.label_accuracy === undefined ? '-' : fmt(r.label_accuracy) })));
  }
  table.append(body);
  return table;
}

/** No recorded scores: how to get them. */
function noScores(name, v) {
  const dir = v.builtin ? name : `data/checkpoints/${name}/${v.version}`;
  return el('p', { class: 'small muted no-scores' }, 'No scores recorded. ',
    el('code', { text: `ddpm eval ${dir} --record` }),
    ' scores its samples (the digits score: digits-like checkpoints; ',
    el('code', { text: '--fid DATASET' }), ' adds the FID) and records them here.');
}

/** The defaults the config holds now, where they were changed after training. */
function defaultsChanged(meta) {
  const changed = meta.defaults_after_training && meta.defaults_after_training.changed;
  if (!changed || typeof changed !== 'object') return '';
  const parts = Object.entries(changed)
    .filter(([, vals]) => Array.isArray(vals) && vals.length > 1)
    .map(([k, vals]) => `${k} ${vals.join(' → ')}`);
  if (!parts.length) return '';
  return el('p', { class: 'small defaults-changed' },
    `Defaults changed after training: ${parts.join('; ')} (the config above holds the current ones; the command shows the training run's).`);
}

// The measured sampling defaults (meta.json's sampling_defaults): one row per setting.
function defaultsTable(measured) {
  if (!measured || !Array.isArray(measured.cells)) return null;
  const table = el('table', { class: 'scores defaults' });
  const c = measured.chosen || {};
  table.append(el('caption', { text: `Measured defaults: ${c.steps} ${c.sampler} steps` +
    (c.guidance ? `, guidance ${c.guidance}` : '') + ` (${measured.images} images per row, ${measured.seconds} s)` }));
  const heads = ['stage', 'sampler', 'steps', 'guidance', 'calls', 'noise ratio', 'label agreement', 'FID', 'good'];
  table.append(el('thead', {}, el('tr', {}, ...heads.map((h) => el('th', { scope: 'col', text: h })))));
  const body = el('tbody');
  for (const r of measured.cells) {
    const chosen = r.stage === (c.guidance === null ? 1 : 2) && r.sampler === c.sampler && r.steps === c.steps && r.guidance === c.guidance;
    const row = el('tr', chosen ? { class: 'chosen' } : {},
      ...[r.stage, r.sampler, r.steps, r.guidance ?? '-', r.network_calls, fmt(r.noise_ratio),
        r.label_agreement ?? '-', r.fid === null || r.fid === undefined ? '-' : fmt(r.fid), r.good_enough ? 'yes' : ''].map((x) => el('td', { text: String(x) })));
    body.append(row);
  }
  table.append(body);
  return table;
}

function versionCard(name, v, latest) {
  const cfg = v.config || {};
  const meta = v.meta || {};
  const ref = `${name}@${v.version}`;
  const card = el('article', { class: 'card version', 'data-ref': ref });
  const title = el('h3', { text: ref });
  if (v.version === latest) title.append(' ', el('span', { class: 'pill', text: 'latest' }));
  if (v.builtin) title.append(' ', el('span', { class: 'pill muted', text: 'built in' }));
  const img = el('img', { class: 'samples', alt: `Samples of ${ref}` });
  const fig = el('figure', { class: 'grid-fig' }, img);
  setSource(img, `/checkpoints/${encodeURIComponent(name)}/${encodeURIComponent(v.version)}/samples.png`)
    .catch(() => {});
  img.addEventListener('error', () => { fig.replaceChildren(el('p', { class: 'muted small', text: 'No sample grid.' })); });
  const unet = cfg.unet || {};
  const schedule = cfg.schedule || {};
  const classes = cfg.num_classes || unet.num_classes;
  const ds = meta.dataset || {};
  const config = dl([
    ['image', cfg.image_size ? `${cfg.channels || unet.in_channels}×${cfg.image_size}×${cfg.image_size}` : ''],
    ['classes', classes ? `${classes}${Array.isArray(cfg.class_names) ? ` (${cfg.class_names.slice(0, 10).join(', ')}${cfg.class_names.length > 10 ? ', …' : ''})` : ''}` : 'unconditional'],
    ['parameters', meta.parameters ? meta.parameters.toLocaleString() : ''],
    ['schedule', schedule.kind ? `${schedule.kind}, T = ${schedule.num_train_timesteps}` : ''],
    ['defaults', cfg.default_steps ? `${cfg.default_steps} ${cfg.default_sampler} steps${classes ? `, guidance ${cfg.default_guidance_scale}` : ''}` : ''],
  ]);
  const provenance = dl([
    ['created', meta.created_at ? new Date(meta.created_at).toLocaleString() : ''],
    ['dataset', ds.name ? `${ds.name}${ds.size ? ` (${ds.size} images)` : ''}` : typeof meta.dataset === 'string' ? meta.dataset : ''],
    ['training', meta.training_steps ? `${meta.training_steps} steps${meta.images_seen ? `, ${meta.images_seen.toLocaleString()} images seen` : ''}` : ''],
    ['final loss', typeof meta.loss === 'number' ? fmt(meta.loss, 4) : ''],
    ['time', meta.training_time_s ? `${Math.round(meta.training_time_s)} s on ${meta.device || '?'}` : ''],
  ]);
  if (meta.job_id) {
    // The training job that made it: its run (while the service keeps the job, a day).
    provenance.append(el('dt', { text: 'job' }),
      el('dd', {}, el('a', { href: `#/train?job=${encodeURIComponent(meta.job_id)}`, class: 'job-link', text: meta.job_id })));
  }
  const details = el('details', {},
    el('summary', { text: 'Full config and metadata' }),
    el('pre', { text: JSON.stringify({ config: cfg, meta }, null, 2) }));
  const go = el('a', { class: 'button', href: `#/generate?checkpoint=${encodeURIComponent(name)}&version=${encodeURIComponent(v.version)}`, text: 'Generate with this' });
  const info = el('div', { class: 'info' },
    el('div', { class: 'cols' },
      el('section', {}, el('h4', { text: 'Config' }), config),
      el('section', {}, el('h4', { text: 'Provenance' }), provenance)),
    scoresTable(meta.metrics) || noScores(name, v),
    defaultsTable(meta.sampling_defaults) || '',
    meta.command ? el('p', { class: 'small' }, 'Trained with: ', el('code', { text: meta.command })) : '',
    defaultsChanged(meta),
    details, go);
  card.append(title, el('div', { class: 'version-body' }, fig, info));
  return card;
}

export async function renderCheckpoints(root) {
  const list = root.querySelector('#ckpt-list');
  const all = await request('/checkpoints');
  list.replaceChildren();
  if (!all.length) list.append(el('p', { class: 'muted', text: 'No checkpoints.' }));
  for (const c of all) {
    const section = el('section', { class: 'checkpoint', 'data-name': c.name, 'aria-labelledby': `ck-${c.name}` });
    section.append(el('h2', { id: `ck-${c.name}`, text: c.name }));
    const versions = el('div', { class: 'versions' });
    for (const v of [...c.versions].reverse()) versions.append(versionCard(c.name, v, c.latest));
    section.append(versions);
    list.append(section);
  }
}

// Errors at their fields: the page's own checks (every field in one round, from the
// service's schema limits) and the service's 422s ({"detail": [{"field", "reason"}]}),
// both in plain words. An error goes as soon as its field is edited.

/** Remove every error shown in `form` (and its general error box). */
export function clearErrors(form, general) {
  for (const p of form.querySelectorAll('[data-error-for]')) {
    p.textContent = '';
    p.hidden = true;
  }
  for (const input of form.querySelectorAll('[aria-invalid="true"]')) {
    input.removeAttribute('aria-invalid');
  }
  if (general) { general.textContent = ''; general.hidden = true; }
}

/** Clear a field's error when its value changes (once per form). */
export function clearOnEdit(form) {
  if (form.dataset.clearOnEdit) return;
  form.dataset.clearOnEdit = '1';
  const clear = (e) => {
    const input = e.target;
    if (!input || input.getAttribute('aria-invalid') !== 'true') return;
    input.removeAttribute('aria-invalid');
    const box = input.getAttribute('aria-describedby') && document.getElementById(input.getAttribute('aria-describedby'));
    if (box && box.dataset.errorFor) { box.textContent = ''; box.hidden = true; }
  };
  form.addEventListener('input', clear);
  form.addEventListener('change', clear);
}

function errorBox(form, field) {
  const explicit = [...form.querySelectorAll('[data-error-for]')].find((p) => p.dataset.errorFor === field);
  if (explicit) return explicit;
  const input = inputFor(form, field);
  const wrap = input && input.closest('.field');
  if (!wrap) return null;
  const near = wrap.querySelector('[data-error-for]');
  if (near) return near; // the parent's box: one message per control
  const p = document.createElement('p');
  p.className = 'error';
  p.dataset.errorFor = field;
  p.id = `err-${field.replace(/[^A-Za-z0-9_-]/g, '-')}-${Math.random().toString(36).slice(2, 7)}`;
  wrap.append(p);
  return p;
}

/** The control named `field`, or that of its closest parent (options.unet_overrides.x). */
function inputFor(form, field) {
  const parts = field.split('.');
  while (parts.length) {
    const name = parts.join('.');
    const input = [...form.elements].find((e) => e.name === name);
    if (input) return input;
    parts.pop();
  }
  return null;
}

// pydantic's wording, said plainly (the service's own checks already are).
const PLAIN = [
  [/^Input should be greater than or equal to (.+)$/, 'must be at least $1'],
  [/^Input should be greater than (.+)$/, 'must be more than $1'],
  [/^Input should be less than or equal to (.+)$/, 'must be at most $1'],
  [/^Input should be less than (.+)$/, 'must be less than $1'],
  [/^Input should be a valid integer.*$/, 'must be a whole number'],
  [/^Input should be a valid number.*$/, 'must be a number'],
  [/^Input should be a valid boolean.*$/, 'must be on or off'],
  [/^Input should be (.+)$/, 'must be $1'],
  [/^String should match pattern .*$/, 'is not in the expected form'],
  [/^String should have at most (\d+) characters?$/, 'must be at most $1 characters'],
  [/^Field required$/, 'is required'],
  [/^Extra inputs are not permitted$/, 'is not an option here'],
];

/** A reason in plain words. */
export function plain(reason) {
  const text = String(reason ?? '').trim();
  for (const [re, out] of PLAIN) if (re.test(text)) return text.replace(re, out);
  return text;
}

/**
 * Show ApiError `err` in `form`: each {field, reason} next to its field (or in `general`
 * when no control has that name). Focuses the first field in error. Returns the fields
 * shown next to a control.
 */
export function showErrors(form, err, general) {
  clearOnEdit(form);
  const shown = [];
  const rest = [];
  for (const { field, reason } of err.fields || []) {
    const box = errorBox(form, field);
    if (!box) { rest.push(`${field}: ${plain(reason)}`); continue; }
    const input = inputFor(form, field);
    // A sub-field (options.unet_overrides.channel_mult) is named in its parent's box.
    box.textContent = input && input.name !== field ? `${field.slice(input.name.length + 1)}: ${plain(reason)}` : plain(reason);
    box.hidden = false;
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', box.id);
    }
    shown.push(field);
  }
  if (!(err.fields || []).length) rest.push(err.message);
  if (general) {
    general.textContent = rest.join('\n');
    general.hidden = rest.length === 0;
  }
  const first = shown.length ? inputFor(form, shown[0]) : null;
  if (first) first.focus();
  return shown;
}

// -- the page's own checks, from a property of the service's JSON schema --------------

/** {type, minimum, maximum, exclusiveMinimum, exclusiveMaximum} of a (nullable) property. */
export function numberRule(prop) {
  if (!prop) return null;
  const real = prop.anyOf ? prop.anyOf.find((v) => v.type && v.type !== 'null') : prop;
  if (!real || (real.type !== 'integer' && real.type !== 'number')) return null;
  return {
    integer: real.type === 'integer',
    min: real.minimum,
    max: real.maximum,
    gt: real.exclusiveMinimum,
    lt: real.exclusiveMaximum,
    nullable: Boolean(prop.anyOf && prop.anyOf.some((v) => v.type === 'null')),
  };
}

const num = (x) => (Math.abs(x) >= 1e15 ? String(BigInt(Math.round(x))) : String(x));

/** The limits of a rule in words: "1 to 64", "at least 0", "more than 0, at most 1". */
export function limitText(rule) {
  if (!rule) return '';
  const lo = rule.min !== undefined ? num(rule.min) : null;
  const hi = rule.max !== undefined ? num(rule.max) : null;
  if (rule.gt !== undefined) return `more than ${num(rule.gt)}${hi !== null ? `, at most ${hi}` : ''}`;
  if (lo !== null && hi !== null) return `${lo} to ${hi}`;
  if (lo !== null) return `at least ${lo}`;
  if (hi !== null) return `at most ${hi}`;
  return '';
}

/** Why `text` breaks `rule` (plain words), or '' when it is fine. Empty: fine if allowed. */
export function checkNumber(text, rule, { required = false } = {}) {
  const v = String(text ?? '').trim();
  if (v === '') return required ? 'is required' : '';
  if (!rule) return '';
  if (!/^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(v)) return rule.integer ? 'must be a whole number' : 'must be a number';
  const x = Number(v);
  if (rule.integer && !/^-?\d+$/.test(v)) return 'must be a whole number';
  const big = rule.integer && !Number.isSafeInteger(x) ? BigInt(v) : null;
  const below = (lim) => (big !== null ? big < BigInt(Math.round(lim)) : x < lim);
  const above = (lim) => (big !== null ? big > BigInt(Math.round(lim)) : x > lim);
  if (rule.min !== undefined && below(rule.min)) return `must be at least ${num(rule.min)}`;
  if (rule.gt !== undefined && !(x > rule.gt)) return `must be more than ${num(rule.gt)}`;
  if (rule.max !== undefined && above(rule.max)) return `must be at most ${num(rule.max)}`;
  if (rule.lt !== undefined && !(x < rule.lt)) return `must be less than ${num(rule.lt)}`;
  return '';
}

/** Show problems [{field, reason}] found by the page itself (as a 422 would be shown). */
export function showProblems(form, problems, general) {
  return showErrors(form, { fields: problems, message: '' }, general);
}

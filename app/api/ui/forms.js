// Showing the service's 422 errors ({"detail": [{"field", "reason"}]}) at their fields.

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

/**
 * Show ApiError `err` in `form`: each {field, reason} next to its field (or in `general`
 * when no control has that name). Focuses the first field in error. Returns the fields
 * shown next to a control.
 */
export function showErrors(form, err, general) {
  const shown = [];
  const rest = [];
  for (const { field, reason } of err.fields || []) {
    const box = errorBox(form, field);
    if (!box) { rest.push(`${field}: ${reason}`); continue; }
    const input = inputFor(form, field);
    // A sub-field (options.unet_overrides.channel_mult) is named in its parent's box.
    box.textContent = input && input.name !== field ? `${field.slice(input.name.length + 1)}: ${reason}` : reason;
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

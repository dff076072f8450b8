// The page: a hash router over four views, and the API key prompt.
//   #/generate[?checkpoint=&version=]  #/job/{id}  #/history  #/checkpoints  #/train[?job=]

import { auth, onKeyNeeded } from './api.js';
import { renderCheckpoints } from './checkpoints.js';
import { GenerateView } from './generate.js';
import { clearHistory, renderHistory, restoreHistory } from './history.js';
import { TrainView } from './train.js';

const $ = (id) => document.getElementById(id);
const VIEWS = ['generate', 'history', 'checkpoints', 'train'];

// -- API key prompt --------------------------------------------------------------------
let pending = null;
function askForKey(reason) {
  if (pending) return pending; // one dialog for every request that got a 401
  const dialog = $('key-dialog');
  const input = $('key-input');
  $('key-reason').textContent = auth.key
    ? `The key was refused (${typeof reason === 'string' ? reason : 'invalid'}). Enter another; it is kept for this browser session only.`
    : 'This service requires an API key. It is kept for this browser session only.';
  input.value = '';
  pending = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const ok = dialog.returnValue === 'ok' && input.value.trim() !== '';
      if (ok) auth.key = input.value.trim();
      pending = null;
      resolve(ok);
    }, { once: true });
  });
  dialog.returnValue = '';
  dialog.showModal();
  input.focus();
  return pending;
}
onKeyNeeded(askForKey);

// -- views -----------------------------------------------------------------------------
const generate = new GenerateView($('view-generate'));
const train = new TrainView($('view-train'), { onPublished: () => {} });

function parse() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  const params = Object.fromEntries(new URLSearchParams(query || ''));
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'job' && parts[1]) return { view: 'generate', params: { ...params, job: parts[1] } };
  return { view: VIEWS.includes(parts[0]) ? parts[0] : 'generate', params };
}

function showError(err) {
  const banner = $('page-error');
  if (!err) { banner.hidden = true; return; }
  banner.textContent = err.status === 401
    ? 'This service needs an API key: reload the page to enter one.'
    : `The service could not be reached or refused: ${err.message}`;
  banner.hidden = false;
}

let current = null;
async function route() {
  const { view, params } = parse();
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const title = { generate: 'Generate', history: 'History', checkpoints: 'Checkpoints', train: 'Train' }[view];
  document.title = `${title} · ddpm-service`;
  if (current !== null && current !== view) $('main').focus({ preventScroll: true });
  current = view;
  showError(null);
  if (view !== 'history') forgetCleared();
  try {
    if (view === 'generate') await generate.show(params);
    else if (view === 'history') await renderHistory($('view-history'));
    else if (view === 'checkpoints') await renderCheckpoints($('view-checkpoints'));
    else if (view === 'train') await train.show(params);
    document.body.dataset.ready = view;
  } catch (err) {
    showError(err);
    document.body.dataset.ready = `${view}-error`;
  }
}

// Clearing the history can be undone (until the page is left or reloaded).
let cleared = null;
$('history-clear').addEventListener('click', () => {
  cleared = clearHistory();
  renderHistory($('view-history'));
  $('history-cleared-count').textContent = `${cleared.length} job${cleared.length === 1 ? '' : 's'}`;
  $('history-cleared').hidden = false;
  $('history-undo').focus();
});
function forgetCleared() {
  cleared = null;
  $('history-cleared').hidden = true;
}
$('history-undo').addEventListener('click', () => {
  if (cleared) restoreHistory(cleared);
  cleared = null;
  $('history-cleared').hidden = true;
  renderHistory($('view-history'));
});

window.addEventListener('hashchange', route);
route();

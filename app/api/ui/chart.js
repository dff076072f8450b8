// A small live line chart on a canvas: the training loss (left axis) and the learning
// rate (right axis) against the step.

const COLORS = { loss: '#2563eb', lr: '#d97706', grid: '#e5e7eb', text: '#4b5563', axis: '#9ca3af' };

function niceNumber(x) {
  if (!Number.isFinite(x)) return '';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1000 || a < 0.01) return x.toExponential(1).replace('e-', 'e−');
  return Number(x.toPrecision(3)).toString();
}

export class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.reset();
    this.resize = () => this.draw();
    window.addEventListener('resize', this.resize);
  }

  reset(total = 0) {
    this.points = []; // [step, loss, lr]
    this.total = total;
    this.empty = 'waiting for the first steps…';
    this.canvas.dataset.points = '0';
    this.canvas.setAttribute('aria-label', 'Loss and learning rate curve (no data yet)');
    this.draw();
  }

  /** What the chart says while it has no points. */
  setEmpty(text) {
    this.empty = text;
    if (!this.points.length) this.canvas.setAttribute('aria-label', `Loss and learning rate curve: ${text}`);
    this.draw();
  }

  push(p) {
    if (!p || !Number.isFinite(p.step)) return;
    if (p.total) this.total = p.total;
    const last = this.points[this.points.length - 1];
    if (last && p.step <= last[0]) return; // a replayed or final duplicate
    const loss = typeof p.loss === 'number' && Number.isFinite(p.loss) ? p.loss : null;
    const lr = typeof p.lr === 'number' && Number.isFinite(p.lr) ? p.lr : null;
    if (loss === null && lr === null) return;
    this.points.push([p.step, loss, lr]);
    this.canvas.dataset.points = String(this.points.length);
    this.canvas.dataset.lastLoss = loss === null ? '' : String(loss);
    this.canvas.setAttribute('aria-label',
      `Training curve: loss ${niceNumber(loss)} and learning rate ${niceNumber(lr)} at step ${p.step} of ${this.total}`);
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(200, c.clientWidth || 600);
    const h = Math.max(150, c.clientHeight || 260);
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, w, h);
    const pad = { l: 52, r: 60, t: 24, b: 28 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    const pts = this.points;
    const steps = Math.max(1, this.total || (pts.length ? pts[pts.length - 1][0] : 1));
    const losses = pts.map((p) => p[1]).filter((v) => v !== null);
    const lrs = pts.map((p) => p[2]).filter((v) => v !== null);
    let lo = losses.length ? Math.min(...losses) : 0;
    let hi = losses.length ? Math.max(...losses) : 1;
    if (hi - lo < 1e-12) { hi += 0.5 * (Math.abs(hi) || 1); lo -= 0.5 * (Math.abs(lo) || 1); }
    lo = Math.max(0, lo - 0.05 * (hi - lo));
    const lrHi = lrs.length ? Math.max(...lrs) * 1.05 || 1 : 1;
    const x = (s) => pad.l + (pw * s) / steps;
    const yL = (v) => pad.t + ph * (1 - (v - lo) / (hi - lo));
    const yR = (v) => pad.t + ph * (1 - v / lrHi);

    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    // Grid and axis labels.
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + (ph * i) / 4;
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke();
      ctx.fillStyle = COLORS.loss;
      ctx.textAlign = 'right';
      ctx.fillText(niceNumber(hi - ((hi - lo) * i) / 4), pad.l - 6, y + 4);
      ctx.fillStyle = COLORS.lr;
      ctx.textAlign = 'left';
      ctx.fillText(niceNumber(lrHi - (lrHi * i) / 4), pad.l + pw + 6, y + 4);
    }
    ctx.fillStyle = COLORS.text;
    ctx.textAlign = 'center';
    for (let i = 0; i <= 4; i++) ctx.fillText(String(Math.round((steps * i) / 4)), x((steps * i) / 4), h - 8);
    ctx.strokeStyle = COLORS.axis;
    ctx.strokeRect(pad.l, pad.t, pw, ph);
    // Legend.
    ctx.textAlign = 'left';
    ctx.fillStyle = COLORS.loss; ctx.fillRect(pad.l, 8, 14, 3);
    ctx.fillStyle = COLORS.text; ctx.fillText('loss', pad.l + 18, 13);
    ctx.fillStyle = COLORS.lr; ctx.fillRect(pad.l + 60, 8, 14, 3);
    ctx.fillStyle = COLORS.text; ctx.fillText('learning rate', pad.l + 78, 13);
    if (!pts.length) {
      ctx.textAlign = 'center';
      ctx.fillText(this.empty, pad.l + pw / 2, pad.t + ph / 2);
      return;
    }
    const line = (color, index, y, dash) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.setLineDash(dash);
      ctx.beginPath();
      let started = false;
      for (const p of pts) {
        if (p[index] === null) continue;
        if (!started) { ctx.moveTo(x(p[0]), y(p[index])); started = true; } else ctx.lineTo(x(p[0]), y(p[index]));
      }
      if (pts.filter((p) => p[index] !== null).length === 1) {
        const p = pts.find((q) => q[index] !== null);
        ctx.arc(x(p[0]), y(p[index]), 2, 0, 2 * Math.PI);
      }
      ctx.stroke();
      ctx.setLineDash([]);
    };
    line(COLORS.lr, 2, yR, [4, 3]);
    line(COLORS.loss, 1, yL, []);
  }
}

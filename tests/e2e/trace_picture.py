"""A trace drawn as a waterfall (PNG), from the spans an OTLP receiver got: what a trace
viewer such as Jaeger shows, for docs/images/trace.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

COLORS = {"ddpm-api": (37, 99, 235), "ddpm-worker": (217, 119, 6)}


def draw_trace(spans: list[tuple[str, Any]], out: Path, width: int = 1100) -> None:
    """``spans``: (service, OTLP span) of one trace; each row a span, indented under its
    parent, its bar placed by its start and end."""
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    children: dict[bytes, list] = {}
    for svc, s in spans:
        children.setdefault(s.parent_span_id, []).append((svc, s))
    roots = [(svc, s) for svc, s in spans if s.parent_span_id not in by_id]
    rows: list[tuple[int, str, Any]] = []

    def walk(node: tuple[str, Any], depth: int) -> None:
        rows.append((depth, *node))
        for child in sorted(
            children.get(node[1].span_id, []), key=lambda n: n[1].start_time_unix_nano
        ):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda n: n[1].start_time_unix_nano):
        walk(root, 0)
    t0 = min(s.start_time_unix_nano for _, s in spans)
    t1 = max(s.end_time_unix_nano for _, s in spans)
    label_w, row_h, pad = 330, 22, 12
    img = Image.new("RGB", (width, pad * 2 + row_h * (len(rows) + 1)), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    scale = (width - label_w - 2 * pad - 70) / max(t1 - t0, 1)
    d.text((pad, pad), f"one job's trace: {(t1 - t0) / 1e6:.0f} ms", fill="black", font=font)
    for i, (depth, svc, s) in enumerate(rows, start=1):
        y = pad + i * row_h
        d.text((pad + 14 * depth, y + 4), f"{s.name}  [{svc}]", fill="black", font=font)
        x0 = label_w + pad + (s.start_time_unix_nano - t0) * scale
        x1 = max(x0 + 2, label_w + pad + (s.end_time_unix_nano - t0) * scale)
        d.rectangle((x0, y + 3, x1, y + row_h - 4), fill=COLORS.get(svc, (107, 114, 128)))
        ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
        d.text((x1 + 6, y + 4), f"{ms:.1f} ms", fill=(75, 85, 99), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)

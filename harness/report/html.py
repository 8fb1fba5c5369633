"""``report.html``: one static page per run folder (no server, nothing fetched): the tables, the
figures and an image comparison view of each benchmark's sample images, the hazy input beside each
method's output, with a slider that wipes from the input to a chosen method's output.
"""

from __future__ import annotations

import html
from pathlib import Path

from harness.report.frame import Group, titles
from harness.report.render import to_html
from harness.report.sanity import collapse_reasons
from harness.store import atomic_write_bytes

esc = html.escape

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5rem auto;max-width:1400px;
 padding:0 1rem;color:#222;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
nav a{margin-right:1rem}
table.report{border-collapse:collapse;margin:1rem 0;font-size:.85rem;font-variant-numeric:tabular-nums}
table.report caption{text-align:left;font-weight:600;padding:.3rem 0}
table.report th,table.report td{padding:.2rem .55rem;text-align:right;white-space:nowrap}
table.report thead th{border-bottom:1px solid #444;text-align:center}
table.report thead tr:first-child th{border-top:2px solid #222}
table.report tbody tr:last-child td,table.report tbody tr:last-child th{border-bottom:2px solid #222}
table.report tbody th{text-align:left;font-weight:normal}
table.report tr.section th{text-align:left;font-weight:700;background:#f3f3f3}
table.report tr.group th{text-align:left;font-style:italic;color:#555}
td.best{font-weight:700}td.second{text-decoration:underline}
tr.flagged th,td.flagged{background:#fde8e8;color:#a00}
tr.published th,tr.published td{color:#666;font-style:italic}
ul.notes{font-size:.8rem;color:#444;max-width:1100px}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}
.strip{display:flex;gap:.5rem;overflow-x:auto;padding-bottom:.5rem}
.strip figure{margin:0;flex:0 0 auto;text-align:center}
.strip img{height:180px;image-rendering:auto}
.strip figcaption.flagged{color:#a00;font-weight:600}
.compare{position:relative;display:inline-block;line-height:0;margin:.5rem 0}
.compare img{max-height:360px;display:block}
.compare .top{position:absolute;left:0;top:0;overflow:hidden;height:100%;border-right:2px solid #fff}
.compare .top img{max-width:none}
"""

SCRIPT = """
function wipe(id){
  const box=document.getElementById(id), top=box.querySelector('.top'), r=document.getElementById(id+'-r');
  top.style.width=r.value+'%';
  top.querySelector('img').style.width=box.querySelector('.base').clientWidth+'px';
}
function pick(id){
  const s=document.getElementById(id+'-s'), box=document.getElementById(id);
  box.querySelector('.base').src=s.value; wipe(id);
}
window.addEventListener('load',()=>document.querySelectorAll('.compare').forEach(b=>wipe(b.id)));
"""


def comparison_view(bench: str, entries: list[tuple[Group, list[dict[str, str]]]], index: int) -> str:
    """Side-by-side strips (input, each method, ground truth if any) and a wipe slider per sample image of ``bench``."""
    entries = [(g, items) for g, items in entries if g.kind != "graft"]
    if not entries:
        return ""
    names = titles([g for g, _ in entries])
    out = [f"<h3>{esc(bench)}</h3>"]
    for k, first in enumerate(entries[0][1]):
        name = first["name"]
        outputs = []
        for g, items in entries:
            item = next((s for s in items if s["name"] == name), None)
            if item:
                outputs.append((g, item["output"]))
        strip = [f'<figure><img src="{esc(first["input"])}" alt="input {esc(name)}" loading="lazy">'
                 f"<figcaption>hazy input</figcaption></figure>"]
        for g, path in outputs:
            flagged = bool(collapse_reasons(g))
            cls = ' class="flagged"' if flagged else ""
            strip.append(f'<figure><img src="{esc(path)}" alt="{esc(names[g.id])} {esc(name)}" loading="lazy">'
                         f"<figcaption{cls}>{'⚠ ' if flagged else ''}{esc(names[g.id])}</figcaption></figure>")
        if first.get("reference"):
            strip.append(f'<figure><img src="{esc(first["reference"])}" alt="ground truth {esc(name)}" loading="lazy">'
                         f"<figcaption>ground truth</figcaption></figure>")
        out.append(f"<p><b>{esc(name)}</b></p><div class=\"strip\">{''.join(strip)}</div>")
        if outputs:
            box = f"cmp{index}-{k}"
            options = "".join(f'<option value="{esc(path)}">{esc(names[g.id])}</option>' for g, path in outputs)
            out.append(
                f'<div><label>wipe from the input to <select id="{box}-s" onchange="pick(\'{box}\')">{options}'
                f'</select></label> <input id="{box}-r" type="range" min="0" max="100" value="50" '
                f'oninput="wipe(\'{box}\')" aria-label="wipe position"></div>'
                f'<div class="compare" id="{box}"><img class="base" src="{esc(outputs[0][1])}" alt="output">'
                f'<div class="top"><img src="{esc(first["input"])}" alt="input"></div></div>')
    return "\n".join(out)


def write_html(path: Path, title: str, summary: str, tables: list, figures: dict[str, Path],
               sample_sets: dict[str, list], appendix: list) -> Path:
    """Write the page; image paths are relative to the page's folder."""
    root = path.parent
    parts = [f"<h1>{esc(title)}</h1>", f"<p>{esc(summary)}</p>",
             '<nav><a href="#tables">Tables</a><a href="#figures">Figures</a><a href="#images">Images</a>'
             + ('<a href="#published">Published</a>' if appendix else "") + "</nav>",
             '<h2 id="tables">Tables</h2>']
    parts += [to_html(t) for t in tables] or ["<p>No finished cells yet.</p>"]
    parts.append('<h2 id="figures">Figures</h2>')
    for name, png in figures.items():
        rel = Path(png).resolve().relative_to(root.resolve()).as_posix()
        parts.append(f'<figure><img src="{esc(rel)}" alt="{esc(name)}"><figcaption>{esc(name)} '
                     f'(<a href="{esc(Path(rel).with_suffix(".pdf").as_posix())}">PDF</a>)</figcaption></figure>')
    parts.append('<h2 id="images">Images: hazy input against each method</h2>')
    views = [comparison_view(bench, entries, i) for i, (bench, entries) in enumerate(sample_sets.items())]
    parts += [v for v in views if v] or ["<p>No sample images in the records (eval.samples).</p>"]
    if appendix:
        parts.append('<h2 id="published">Published tables (as printed)</h2>')
        parts += [to_html(t) for t in appendix]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


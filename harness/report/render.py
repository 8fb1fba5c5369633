"""A :class:`~harness.report.frame.Table` as markdown, LaTeX (booktabs) or an HTML fragment.

Our own small renderer: pandas' Styler writes one format at a time from its own styling state and
has no notion of section rows, per-cell collapse flags or published rows, which all three formats
must show the same way. Best is bold, second underlined; ``⚠`` (LaTeX ``‡``) marks collapsed
outputs and ``†`` published numbers.
"""

from __future__ import annotations

import html
from itertools import groupby

from harness.report.frame import Cell, Column, Row, Table, cell_text

PUBLISHED = "†"
COLLAPSED = {"md": "⚠", "latex": "‡", "html": "⚠"}


def _spans(columns: list[Column]) -> list[tuple[str, int]]:
    return [(group, len(list(items))) for group, items in groupby(columns, key=lambda c: c.group)]


def _has_groups(table: Table) -> bool:
    return any(c.group for c in table.columns)


def _footnotes(table: Table, fmt: str) -> list[str]:
    notes = list(table.notes)
    cell_notes: dict[tuple[str, tuple[str, ...]], None] = {}
    for row in table.rows:
        if row.flags:
            notes.append(f"{COLLAPSED[fmt]} {row.label}: outputs collapsed ({'; '.join(row.flags)}).")
            continue
        for col in table.columns:
            cell = row.cells.get(col.key)
            if cell is not None and cell.flags:  # rows that are quantities (Table 1) name only the method
                who = col.header if row.quantity is not None else f"{row.label}, {col.header}"
                cell_notes[(who, cell.flags)] = None
    notes += [f"{COLLAPSED[fmt]} {who}: outputs collapsed ({'; '.join(flags)})." for who, flags in cell_notes]
    sources = list(dict.fromkeys(r.note for r in table.rows if r.published and r.note))
    if sources:
        notes.append(f"{PUBLISHED} published numbers, copied from " + "; ".join(sources)
                     + "; not measured here, never ranked or averaged with ours.")
    return notes


def _label(row: Row, fmt: str) -> str:
    return row.label + (f" {PUBLISHED}" if row.published else "") + (f" {COLLAPSED[fmt]}" if row.flags else "")


def _text(cell: Cell | None, column: Column, row: Row, fmt: str) -> str:
    if cell is None:
        return "" if row.published or column.published else "n/a"
    text = cell_text(cell, column)
    return text + (f" {COLLAPSED[fmt]}" if cell.flags and not row.flags else "")


def _headings(table: Table):
    """Yield ("section" | "group" | "row", text or row) in order."""
    section = group = None
    for row in table.rows:
        if row.section != section:
            section, group = row.section, None
            if section:
                yield "section", section
        if row.group != group:
            group = row.group
            if group:
                yield "group", group
        yield "row", row


# ------------------------------------------------------------------ markdown


def to_markdown(table: Table) -> str:
    def md_cell(cell: Cell | None, column: Column, row: Row) -> str:
        text = _text(cell, column, row, "md").replace("|", "\\|")
        mark = cell.mark if cell is not None else None
        return f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text

    headers = [table.label_header] + [f"{c.group} {c.header}".strip() if c.group else c.header for c in table.columns]
    align = {"l": ":---", "c": ":---:", "r": "---:"}
    lines = [f"### {table.title}", "", "| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + [align[c.align] for c in table.columns]) + "|"]
    blank = [""] * len(table.columns)
    for kind, item in _headings(table):
        if kind == "section":
            lines.append("| " + " | ".join([f"**{item}**"] + blank) + " |")
        elif kind == "group":
            lines.append("| " + " | ".join([f"*{item}*"] + blank) + " |")
        else:
            cells = [md_cell(item.cells.get(c.key), c, item) for c in table.columns]
            lines.append("| " + " | ".join([_label(item, "md")] + cells) + " |")
    notes = _footnotes(table, "md")
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")


# ------------------------------------------------------------------ LaTeX

_LATEX = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$"),
          ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
          ("±", r"$\pm$"), ("↓", r"$\downarrow$"), ("↑", r"$\uparrow$"), ("✓", r"\checkmark{}"),
          ("×", r"$\times$"), ("Δ", r"$\Delta$"), ("⚠", r"\ddag{}"), ("‡", r"\ddag{}"), ("†", r"\dag{}"),
          ("≥", r"$\geq$"), ("≤", r"$\leq$"), ("→", r"$\rightarrow$"), ("·", r"$\cdot$"), ("−", "-"),
          ("<", r"\textless{}"), (">", r"\textgreater{}")]


def latex_escape(text: str) -> str:
    out = []
    for ch in text:
        out.append(next((b for a, b in _LATEX if a == ch), ch))
    return "".join(out)


def to_latex(table: Table, caption: str | None = None) -> str:
    """A ``table`` float (booktabs; needs booktabs, graphicx and amssymb)."""
    def tex_cell(cell: Cell | None, column: Column, row: Row) -> str:
        text = latex_escape(_text(cell, column, row, "latex"))
        mark = cell.mark if cell is not None else None
        return r"\textbf{" + text + "}" if mark == "best" else r"\underline{" + text + "}" if mark == "second" else text

    n = len(table.columns) + 1
    spec = "l" + "".join(c.align for c in table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(caption or table.title) + "}",
             r"\label{tab:" + table.name + "}", r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{" + spec + "}",
             r"\toprule"]
    if _has_groups(table):
        heads, rules, start = [""], [], 2
        for group, span in _spans(table.columns):
            heads.append(r"\multicolumn{" + str(span) + "}{c}{" + latex_escape(group) + "}" if group else
                         " & ".join([""] * span))
            if group:
                rules.append(r"\cmidrule(lr){" + f"{start}-{start + span - 1}" + "}")
            start += span
        lines += [" & ".join(heads) + r" \\", " ".join(rules)]
    lines.append(" & ".join(latex_escape(h) for h in [table.label_header] + [c.header for c in table.columns]) + r" \\")
    lines.append(r"\midrule")
    first = True
    for kind, item in _headings(table):
        if kind == "section":
            if not first:
                lines.append(r"\midrule")
            lines.append(r"\multicolumn{" + str(n) + "}{l}{\\textbf{" + latex_escape(item) + "}}" + r" \\")
        elif kind == "group":
            lines.append(r"\multicolumn{" + str(n) + "}{l}{\\textit{" + latex_escape(item) + "}}" + r" \\")
        else:
            cells = [tex_cell(item.cells.get(c.key), c, item) for c in table.columns]
            lines.append(" & ".join([latex_escape(_label(item, "latex"))] + cells) + r" \\")
        first = False
    lines += [r"\bottomrule", r"\end{tabular}}"]
    notes = _footnotes(table, "latex")
    if notes:
        lines.append(r"\par\smallskip{\footnotesize\raggedright " + r" \par ".join(latex_escape(x) for x in notes)
                     + r"\par}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ HTML


def to_html(table: Table) -> str:
    """A ``<table>`` fragment with its caption and notes (classes: best, second, flagged, published)."""
    esc = html.escape

    def td(cell: Cell | None, column: Column, row: Row) -> str:
        classes = [c for c in ((cell.mark if cell else None), "flagged" if cell and cell.flags else None) if c]
        attr = f' class="{" ".join(classes)}"' if classes else ""
        title = f' title="{esc("; ".join(cell.flags))}"' if cell and cell.flags else ""
        align = {"l": ' style="text-align:left"', "c": ' style="text-align:center"'}.get(column.align, "")
        return f"<td{attr}{title}{align}>{esc(_text(cell, column, row, 'html'))}</td>"

    n = len(table.columns) + 1
    out = [f'<table class="report" id="tab-{esc(table.name)}">', f"<caption>{esc(table.title)}</caption>", "<thead>"]
    if _has_groups(table):
        out.append("<tr><th></th>" + "".join(f'<th colspan="{span}">{esc(group)}</th>'
                                              for group, span in _spans(table.columns)) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in [table.label_header] + [c.header for c in table.columns])
               + "</tr>")
    out.append("</thead><tbody>")
    for kind, item in _headings(table):
        if kind in ("section", "group"):
            out.append(f'<tr class="{kind}"><th colspan="{n}">{esc(item)}</th></tr>')
        else:
            classes = " ".join(c for c in ("published" if item.published else "", "flagged" if item.flags else "") if c)
            cls = f' class="{classes}"' if classes else ""
            out.append(f"<tr{cls}><th>{esc(_label(item, 'html'))}</th>"
                       + "".join(td(item.cells.get(c.key), c, item) for c in table.columns) + "</tr>")
    out.append("</tbody></table>")
    notes = _footnotes(table, "html")
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{esc(x)}</li>" for x in notes) + "</ul>")
    return "\n".join(out) + "\n"

"""A self-contained HTML report a person can open and scan: thumbnails grouped by label.

    from zeroshot.output.report import ReportItem, write_report

    items = [ReportItem("a.jpg", "cat", 0.93), ReportItem("b.jpg", "dog", 0.71)]
    write_report("report.html", items, skipped=[("c.jpg", "decode_error: broken data stream")])

One HTML file with everything inline: the CSS, a few lines of vanilla JavaScript (filter by
name or label, minimum score, one label, sort by score or name; sortable tables) and every
thumbnail as a base64 JPEG ``data:`` URI made from the original file with Pillow (a file that
cannot be decoded gets a "no preview" box, never an error). Nothing is fetched from the
network (``report.html#q=cat`` opens the page filtered on "cat"). Every string that comes from the user (file names, labels, queries) is HTML-escaped:
a label ``<script>`` is shown as text and never runs. With an :class:`EvalSection` the page
also shows the metrics, per-class accuracy (a bar chart of the worst classes and a table of
all) and the confusion matrix of the most confused classes, as inline SVG.

Big runs stay readable: each group shows at most ``per_group`` images (the best scores first,
or the order given with ``ordered=True``) and the whole page at most ``max_thumbnails``; the
group headings still count every image. The file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .._version import __version__
from ..data.decode import DEFAULT_MAX_PIXELS, open_image
from ..errors import ImageError, UsageError
from .writers import atomic_file

THUMB_SIZE = 128
PER_GROUP = 60
MAX_THUMBNAILS = 3000
CONFUSED_CLASSES = 12
WORST_CLASSES = 25

ProgressHook = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class ReportItem:
    """One image of the report: its ``path`` as shown, the ``label`` it is grouped under, its
    ``score`` and a ``note`` (e.g. the runner-up labels). The thumbnail is made from ``file``
    (default: ``path``) or from ``image``, a PIL image already in memory."""

    path: str
    label: str | None = None
    score: float | None = None
    note: str = ""
    file: str | None = None
    image: Any = None


@dataclass(frozen=True)
class EvalSection:
    """What the report shows of an evaluation: ``metrics`` (one ``(template set, [(metric,
    value or None)...])`` per row), and for the charts the true and predicted class index of
    every image (``-1``: the image could not be read) with the ``classnames``."""

    classnames: Sequence[str]
    targets: Sequence[int]
    predictions: Sequence[int]
    metrics: Sequence[tuple[str, Sequence[tuple[str, float | None]]]] = ()
    charts_for: str = ""  # the template set the charts describe

    def per_class(self) -> list[tuple[int, int, int]]:
        """``(class index, images, correct)`` of every class with images, worst accuracy first."""
        total = Counter(self.targets)
        correct = Counter(t for t, p in zip(self.targets, self.predictions) if t == p)
        rows = [(c, total[c], correct[c]) for c in range(len(self.classnames)) if total[c]]
        return sorted(rows, key=lambda r: (r[2] / r[1], r[0]))

    def confusions(self) -> Counter:
        """``(true, predicted) -> count`` of the wrong predictions (unreadable images left out)."""
        return Counter((t, p) for t, p in zip(self.targets, self.predictions) if p >= 0 and t != p)

    def most_confused(self, limit: int = CONFUSED_CLASSES) -> list[int]:
        """Up to ``limit`` classes with the most confusions (as the truth or the prediction)."""
        involved: Counter = Counter()
        for (t, p), n in self.confusions().items():
            involved[t] += n
            involved[p] += n
        return [c for c, _ in sorted(involved.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


@dataclass
class ReportStats:
    """What :func:`write_report` put in the page."""

    items: int = 0
    groups: int = 0
    shown: int = 0  # images with a tile in the page
    thumbnails: int = 0  # tiles with a picture
    no_preview: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# ------------------------------------------------------------------------------------- text


def text(value: object) -> str:
    """HTML-escaped text (quotes too: safe in attributes); lone surrogates (undecodable bytes of
    a file name) become visible ``\\udcXX`` escapes so the page stays valid UTF-8."""
    raw = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(raw, quote=True)


def score_text(score: float | None) -> str:
    return "" if score is None else f"{score:.3f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


# ------------------------------------------------------------------------------- thumbnails


def thumbnail(item: ReportItem, size: int = THUMB_SIZE) -> tuple[str | None, str]:
    """``(data URI of a JPEG at most size x size, "")`` or ``(None, reason)``."""
    try:
        if item.image is not None:  # a PIL image, or an array of pixels (CIFAR's HxWx3 uint8)
            img = (item.image if isinstance(item.image, Image.Image) else Image.fromarray(item.image)).convert("RGB")
        else:
            img = open_image(item.file or item.path, max_pixels=DEFAULT_MAX_PIXELS, draft_size=size)
        img.thumbnail((size, size))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=75)
    except ImageError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - a preview must never stop the report
        return None, f"{type(err).__name__}: {err}"
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


# ----------------------------------------------------------------------------------- groups


def group_items(items: Iterable[ReportItem], ordered: bool = False) -> dict[str, list[ReportItem]]:
    """Items by label, the biggest group first (ties by label); best score first in a group
    unless ``ordered`` (then the order given). Items without a label form one group ``""``."""
    groups: dict[str, list[ReportItem]] = {}
    for item in items:
        groups.setdefault(item.label or "", []).append(item)
    if not ordered:
        for members in groups.values():
            members.sort(key=lambda i: -i.score if i.score is not None else float("inf"))
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _thumbnails(items: list[ReportItem], size: int, on_progress: ProgressHook | None) -> list[tuple[str | None, str]]:
    """Every item's thumbnail, in order, made by a few threads (Pillow decodes without the GIL)."""
    results = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="zeroshot-thumbnail") as pool:
        for done, result in enumerate(pool.map(lambda item: thumbnail(item, size), items), 1):
            results.append(result)
            if on_progress and (done % 16 == 0 or done == len(items)):
                on_progress(done, len(items))
    return results


def _tile(item: ReportItem, index: int, uri: str | None, reason: str) -> str:
    picture = (f'<img src="{uri}" alt="{text(item.path)}">' if uri
               else f'<div class="nothumb" title="{text(reason)}">no preview</div>')
    note = f'<span class="note">{text(item.note)}</span>' if item.note else ""
    score = "" if item.score is None else repr(float(item.score))
    return (f'<figure class="item" data-i="{index}" data-name="{text(item.path)}" data-label="{text(item.label or "")}" '
            f'data-score="{score}">{picture}<figcaption><span class="name" title="{text(item.path)}">'
            f'{text(item.path)}</span><span class="score">{score_text(item.score)}</span>{note}</figcaption></figure>')


def _groups_html(groups: dict[str, list[ReportItem]], per_group: int, size: int, group_title: str,
                 stats: ReportStats, on_progress: ProgressHook | None) -> str:
    pictures = iter(_thumbnails([i for m in groups.values() for i in m[:per_group]], size, on_progress))
    parts = []
    done = 0
    for label, members in groups.items():
        tiles = []
        for item in members[:per_group]:
            uri, reason = next(pictures)
            stats.thumbnails += uri is not None
            if uri is None:
                stats.no_preview.append((item.path, reason))
            tiles.append(_tile(item, done, uri, reason))
            done += 1
        stats.shown += len(tiles)
        more = len(members) - len(tiles)
        rest = (f'<p class="more">{more} more not shown (the page holds at most {len(tiles)} per group); '
                f'every image is in the command\'s output rows</p>') if more else ""
        scores = [i.score for i in members if i.score is not None]
        mean = f", mean score {sum(scores) / len(scores):.3f}" if scores else ""
        heading = text(label) if label else "results"
        parts.append(f'<section class="group" data-label="{text(label)}"><h2><span class="what">{text(group_title)}'
                     f'</span> {heading} <small><span class="vis">{len(tiles)}</span> shown of {len(members)} '
                     f'image{"s" if len(members) != 1 else ""}{mean}</small></h2>'
                     f'<div class="grid">{"".join(tiles)}</div>{rest}</section>')
    return "".join(parts)


def _counts_html(groups: dict[str, list[ReportItem]], group_title: str) -> str:
    if len(groups) < 2:
        return ""
    biggest = max(len(m) for m in groups.values())
    rows = "".join(
        f'<tr><td>{text(label)}</td><td class="num" data-v="{len(m)}">{len(m)}</td>'
        f'<td class="bar"><span style="width:{100 * len(m) / biggest:.1f}%"></span></td></tr>'
        for label, m in groups.items())
    return (f'<section id="counts"><h2>Images per {text(group_title)}</h2><table class="sortable">'
            f'<thead><tr><th>{text(group_title)}</th><th>images</th><th></th></tr></thead><tbody>{rows}</tbody>'
            f'</table></section>')


def _skipped_html(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    rows = []
    for path, reason in skipped:
        code, _, detail = reason.partition(": ")
        rows.append(f'<tr><td>{text(path)}</td><td><code>{text(code)}</code></td><td>{text(detail)}</td></tr>')
    reasons = Counter(reason.partition(": ")[0] for _, reason in skipped)
    summary = ", ".join(f"{n} {text(code)}" for code, n in reasons.most_common())
    return (f'<section id="skipped"><h2>Skipped files <small>{len(skipped)}: {summary}</small></h2>'
            f'<table class="sortable"><thead><tr><th>file</th><th>reason</th><th>detail</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


# ------------------------------------------------------------------------------------- eval


def _metrics_html(section: EvalSection) -> str:
    if not section.metrics:
        return ""
    names = [name for name, _ in section.metrics[0][1]]
    head = "".join(f"<th>{text(n)}</th>" for n in names)
    rows = "".join(
        f'<tr><td>{text(label)}</td>'
        + "".join(f'<td class="num" data-v="{-1 if v is None else v}">{percent(v)}</td>' for _, v in values)
        + "</tr>" for label, values in section.metrics)
    return f'<table class="sortable"><thead><tr><th>template set</th>{head}</tr></thead><tbody>{rows}</tbody></table>'


def accuracy_svg(section: EvalSection, limit: int = WORST_CLASSES) -> str:
    """A horizontal bar chart of the ``limit`` classes with the lowest accuracy."""
    worst = section.per_class()[:limit]
    if not worst:
        return ""
    row, left, width = 18, 190, 260
    bars = []
    for n, (c, images, correct) in enumerate(worst):
        name, y, acc = section.classnames[c], 20 + n * row, correct / images
        bars.append(
            f'<g><title>{text(name)}: {correct}/{images} correct</title>'
            f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{text(short(name))}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{width}" height="{row - 5}" fill="#eee"/>'
            f'<rect x="{left}" y="{y + 2}" width="{width * acc:.1f}" height="{row - 5}" fill="{_colour(acc)}"/>'
            f'<text x="{left + width + 6}" y="{y + 12}">{100 * acc:.0f}% ({correct}/{images})</text></g>')
    height = 30 + len(worst) * row
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{left + width + 110}" height="{height}" '
            f'role="img" aria-label="accuracy of the worst classes"><text x="{left}" y="12" class="axis">'
            f'accuracy, worst {len(worst)} classes</text>{"".join(bars)}</svg>')


def _colour(acc: float) -> str:
    """Red (0) to green (1)."""
    return f"hsl({120 * acc:.0f},60%,45%)"


def confusion_svg(section: EvalSection, limit: int = CONFUSED_CLASSES) -> str:
    """The confusion matrix (rows: true class, columns: predicted) of the most confused classes;
    cells hold counts, shaded by the share of the true class's images."""
    classes = section.most_confused(limit)
    if not classes:
        return ""
    counts = Counter((t, p) for t, p in zip(section.targets, section.predictions) if p >= 0)
    totals = Counter(section.targets)
    longest = max(len(short(section.classnames[c], 22)) for c in classes)
    cell, left, top = 30, 190, 30 + int(5.5 * longest)
    size = len(classes) * cell
    parts = []
    for i, c in enumerate(classes):
        name = section.classnames[c]
        y, x = top + i * cell, left + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end"><title>{text(name)}</title>'
                     f'{text(short(name, 26))}</text>')
        parts.append(f'<text transform="translate({x + cell / 2 + 4},{top - 6}) rotate(-60)"><title>{text(name)}'
                     f'</title>{text(short(name, 22))}</text>')
        for j, p in enumerate(classes):
            n = counts[(c, p)]
            share = n / totals[c] if totals[c] else 0.0
            hue = 120 if c == p else 0
            fill = f"hsla({hue},65%,45%,{0.08 + 0.92 * share:.2f})" if n else "#fafafa"
            label = f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle">{n}</text>' if n else ""
            parts.append(f'<g><title>true {text(name)}, predicted {text(section.classnames[p])}: {n}</title>'
                         f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}"/>'
                         f'{label}</g>')
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{left + size + 20 + 3 * longest}" '
            f'height="{top + size + 30}" '
            f'role="img" aria-label="confusion matrix"><text x="4" y="14" class="axis">rows: true class; columns: '
            f'predicted</text>{"".join(parts)}</svg>')


def _eval_html(section: EvalSection) -> str:
    per_class = section.per_class()
    rows = "".join(
        f'<tr><td>{text(section.classnames[c])}</td><td class="num" data-v="{images}">{images}</td>'
        f'<td class="num" data-v="{correct}">{correct}</td><td class="num" data-v="{correct / images}">'
        f'{100 * correct / images:.1f}%</td></tr>' for c, images, correct in per_class)
    pairs = sorted(section.confusions().items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    pair_rows = "".join(
        f'<tr><td>{text(section.classnames[t])}</td><td>{text(section.classnames[p])}</td>'
        f'<td class="num" data-v="{n}">{n}</td></tr>' for (t, p), n in pairs)
    which = f" <small>template set {text(section.charts_for)}</small>" if section.charts_for else ""
    confused = confusion_svg(section) or "<p>No image was misclassified.</p>"
    pairs_table = (f'<table class="sortable" id="pairs"><thead><tr><th>true class</th><th>predicted</th>'
                   f'<th>images</th></tr></thead><tbody>{pair_rows}</tbody></table>' if pairs else "")
    return (f'<section id="eval"><h2>Accuracy</h2>{_metrics_html(section)}'
            f'<h2>Per class{which}</h2><div class="charts"><div><h3>Per-class accuracy</h3>{accuracy_svg(section)}'
            f'<details><summary>all {len(per_class)} classes</summary><table class="sortable"><thead><tr><th>class</th>'
            f'<th>images</th><th>correct</th><th>accuracy</th></tr></thead><tbody>{rows}</tbody></table></details></div>'
            f'<div><h3>Most confused classes</h3>{confused}{pairs_table}</div></div></section>')


# ------------------------------------------------------------------------------------- page


STYLE = """
:root{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#f6f6f4}
body{margin:0 auto;padding:0 20px 40px;max-width:1400px}
header{padding:16px 0 4px}h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:22px 0 8px}
h2 small,.meta{color:#666;font-weight:normal;font-size:13px}.what{color:#888;font-weight:normal;font-size:13px}
nav{position:sticky;top:0;background:#f6f6f4;padding:8px 0;border-bottom:1px solid #ddd;z-index:1;display:flex;
 flex-wrap:wrap;gap:8px;align-items:center}
nav input,nav select{font:inherit;padding:3px 6px;max-width:240px}#minscore{width:6em}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.item{margin:0;width:140px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:5px;box-sizing:border-box}
.item img,.nothumb{display:block;width:128px;height:128px;object-fit:contain;background:#eee}
.nothumb{display:flex;align-items:center;justify-content:center;color:#999;font-size:12px}
figcaption{font-size:12px;margin-top:3px;overflow:hidden}
.name{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.score{font-weight:600}.note{display:block;color:#666;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.more{color:#666;font-style:italic}
table{border-collapse:collapse;background:#fff;margin:4px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eee;cursor:pointer;user-select:none}td.num{text-align:right}
td.bar{width:220px}td.bar span{display:block;height:10px;background:#5b8bd0}
.chart text{font-size:11px;fill:#333}.chart .axis{fill:#666}
.charts{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start;overflow-x:auto}.charts h3{font-size:14px;margin:4px 0}
[hidden]{display:none!important}
"""

SCRIPT = """
(function(){
var $=function(id){return document.getElementById(id);};
var filter=$('filter'),sort=$('sort'),group=$('group'),min=$('minscore'),count=$('shown');
function num(el){var v=parseFloat(el.getAttribute('data-score'));return isNaN(v)?-Infinity:v;}
var order={
 'score-desc':function(a,b){return num(b)-num(a)||a.dataset.i-b.dataset.i;},
 'score-asc':function(a,b){return num(a)-num(b)||a.dataset.i-b.dataset.i;},
 'name':function(a,b){return a.dataset.name.localeCompare(b.dataset.name);},
 'given':function(a,b){return a.dataset.i-b.dataset.i;}};
function apply(){
 var words=filter.value.trim().toLowerCase(),least=parseFloat(min.value),only=group.value,total=0;
 document.querySelectorAll('section.group').forEach(function(sec){
  var grid=sec.querySelector('.grid'),items=Array.prototype.slice.call(grid.children),shown=0;
  items.sort(order[sort.value]).forEach(function(el){grid.appendChild(el);
   var ok=(!words||el.dataset.name.toLowerCase().indexOf(words)>=0||el.dataset.label.toLowerCase().indexOf(words)>=0)
    &&(isNaN(least)||num(el)>=least);
   el.hidden=!ok;if(ok)shown++;});
  sec.hidden=(only!=='*'&&sec.dataset.label!==only)||(shown===0&&items.length>0);
  sec.querySelector('.vis').textContent=shown;if(!sec.hidden)total+=shown;});
 count.textContent=total;}
var hash=location.hash.match(/^#q=(.*)$/);if(hash)filter.value=decodeURIComponent(hash[1]);
[filter,min].forEach(function(el){el.addEventListener('input',apply);});
[sort,group].forEach(function(el){el.addEventListener('change',apply);});
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
 var table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex,up=th.dataset.dir!=='asc';
 table.querySelectorAll('th').forEach(function(h){delete h.dataset.dir;});th.dataset.dir=up?'asc':'desc';
 Array.prototype.slice.call(body.rows).sort(function(a,b){
  var x=a.cells[col],y=b.cells[col],vx=x.dataset.v,vy=y.dataset.v,r;
  r=(vx!==undefined&&vy!==undefined)?parseFloat(vx)-parseFloat(vy):x.textContent.localeCompare(y.textContent);
  return up?r:-r;}).forEach(function(row){body.appendChild(row);});});});
apply();
})();
"""


def _controls(groups: dict[str, list[ReportItem]], group_title: str, ordered: bool) -> str:
    options = "".join(f'<option value="{text(label)}">{text(label or "results")} ({len(m)})</option>'
                      for label, m in groups.items())
    first = '<option value="given">given order</option>' if ordered else ""
    return (f'<nav><input id="filter" type="search" placeholder="filter: file name or label" size="28">'
            f'<label>sort <select id="sort">{first}<option value="score-desc">score, high first</option>'
            f'<option value="score-asc">score, low first</option><option value="name">file name</option>'
            f'</select></label><label>{text(group_title)} <select id="group"><option value="*">all</option>{options}'
            f'</select></label><label>min score <input id="minscore" type="number" step="any" size="6"></label>'
            f'<span class="meta"><span id="shown">0</span> images shown</span></nav>')


def render_report(
    items: Sequence[ReportItem],
    skipped: Sequence[tuple[str, str]] = (),
    *,
    title: str = "zeroshot report",
    meta: Sequence[tuple[str, str]] = (),
    evaluation: EvalSection | None = None,
    group_title: str = "label",
    ordered: bool = False,
    per_group: int = PER_GROUP,
    max_thumbnails: int = MAX_THUMBNAILS,
    thumb_size: int = THUMB_SIZE,
    on_progress: ProgressHook | None = None,
) -> tuple[str, ReportStats]:
    """The report page as a string, and what it holds (see :func:`write_report`)."""
    groups = group_items(items, ordered)
    per_group = max(1, min(per_group, max_thumbnails // max(1, len(groups))))
    stats = ReportStats(items=len(items), groups=len(groups))
    body = _groups_html(groups, per_group, thumb_size, group_title, stats, on_progress)
    facts = "".join(f"<span><b>{text(k)}</b> {text(v)}</span> · " for k, v in meta)
    images = "" if evaluation is not None else (
        f'<span><b>{len(items)}</b> image{"s" if len(items) != 1 else ""} in {len(groups)} '
        f'group{"s" if len(groups) != 1 else ""}</span> · ')
    summary = f'{facts}{images}<span><b>{len(skipped)}</b> skipped</span>'
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="generator" content="zeroshot {text(__version__)}"><title>{text(title)}</title>'
            f'<style>{STYLE}</style></head><body><header><h1>{text(title)}</h1><p class="meta">{summary}</p></header>'
            + (_eval_html(evaluation) if evaluation is not None else "")
            + ('<h2 id="mistakes">Misclassified images</h2>' if evaluation is not None else "")
            + (_controls(groups, group_title, ordered) if items else "")
            + ("" if evaluation is not None else _counts_html(groups, group_title)) + body + _skipped_html(skipped)
            + f'<footer class="meta"><p>made by zeroshot {text(__version__)}</p></footer>'
            f'<script>{SCRIPT}</script></body></html>\n')
    return page, stats


def write_report(
    path: str | os.PathLike,
    items: Sequence[ReportItem],
    skipped: Sequence[tuple[str, str]] = (),
    *,
    option: str = "--report",
    **kwargs: Any,
) -> ReportStats:
    """Write the HTML report of ``items`` (grouped by label) and ``skipped`` files (``(path,
    "code: detail")``) to ``path``, atomically. Keyword arguments: ``title``, ``meta`` (``(name,
    value)`` facts for the heading), ``evaluation`` (an :class:`EvalSection`), ``group_title``
    (what the groups are: "predicted label"), ``ordered`` (keep the order given in a group, e.g.
    search ranks), ``per_group``, ``max_thumbnails``, ``thumb_size``, ``on_progress(done, total)``
    (thumbnails made)."""
    page, stats = render_report(items, skipped, **kwargs)
    with atomic_file(Path(path), option=option) as handle:
        handle.write(page)
    return stats


def check_report_path(path: str | os.PathLike | None, option: str = "--report") -> None:
    """Refuse (:class:`UsageError`) a report path that is not a ``.html`` file in an existing
    folder, before any work is done."""
    if path is None:
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{option} {target}: folder {folder} does not exist")
    if target.is_dir():
        raise UsageError(f"{option} {target}: is a folder; give a file name ending in .html")
    if target.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{option} {target}: the report is an HTML page; name it .html")

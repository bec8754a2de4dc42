"""Plots and reports (learning curves, dataset charts, evaluation reports)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; never opens a window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 150) -> None:
    """Save atomically: a reader never sees half a PNG."""
    import io

    from .checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_learning_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Loss and accuracy per epoch (train vs validation) from a training run's history."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train (augmented, smoothed)")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(ep, [h["train_acc"] for h in history], label="train (augmented)")
    b.plot(ep, [h["val_acc"] for h in history], label="validation")
    b.plot(ep, [h["val_acc_flip"] for h in history], label="validation, flip TTA")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- dataset
# Figures for ``emolens data stats`` (``emolens.datastats.dataset_stats``), 300 DPI.


def plot_class_distribution(counts: dict[str, dict[str, int]], path: str | Path, title: str = "",
                            dpi: int = 300) -> None:
    """Grouped bars of images per class, one bar per split ({split: {class: count}}), the count on each bar,
    so the imbalance (disgust is ~1.5% of FER2013) is visible at a glance."""
    import numpy as np

    plt = _pyplot()
    splits = list(counts)
    classes = list(next(iter(counts.values()))) if counts else []
    x = np.arange(len(classes))
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(classes) + 1.5), 4.2))
    for i, split in enumerate(splits):
        vals = [counts[split][c] for c in classes]
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, vals, width, label=f"{split} ({sum(vals)})")
        ax.bar_label(bars, fontsize=6, padding=1)
    ax.set_xticks(x, classes)
    ax.set_ylabel("images")
    ax.set_title(title or "images per class and split", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)


def plot_sample_grid(samples: dict[str, Any], path: str | Path, title: str = "",
                     counts: dict[str, int] | None = None, dpi: int = 300) -> None:
    """One row per class of a few faces ({class: (k, H, W) uint8}), drawn pixel for pixel in gray (no
    smoothing, fixed 0..255 scale) so what is shown is what the model sees; an empty class gets an empty row.
    The faces are tiled into one image: one imshow instead of one axes per face keeps it fast."""
    import numpy as np

    plt = _pyplot()
    names = list(samples)
    cols = max([len(v) for v in samples.values()] + [1])
    h, w = next((np.shape(v)[1:3] for v in samples.values() if len(v)), (48, 48))
    gap = 2
    mosaic = np.full((len(names) * (h + gap) - gap, cols * (w + gap) - gap), 255, np.uint8)
    for r, name in enumerate(names):
        for c, face in enumerate(samples[name][:cols]):
            mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = face
    labels = []
    for name in names:
        label = name if counts is None else f"{name} ({counts.get(name, 0)})"
        labels.append(label if len(samples[name]) else f"{label}: none")
    fig, ax = plt.subplots(figsize=(0.8 * cols + 1.6, 0.8 * len(names) + 0.6))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(names))], labels, fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title or "samples per class", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- evaluation
# Plots and report files for ``emolens.evaluate``; metric dicts come from ``evaluate.classification_metrics``.


def plot_confusion_matrix(cm, classes, path: str | Path, normalize: bool = False, title: str = "") -> None:
    """Heatmap of a (C, C) confusion matrix (rows true, columns predicted): counts, or each row divided by
    its support (the diagonal is then the per-class recall)."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(cm, np.float64)
    support = cm.sum(axis=1)
    vals = np.divide(cm, support[:, None], out=np.zeros_like(cm), where=support[:, None] > 0) if normalize else cm
    vmax = 1.0 if normalize else max(float(vals.max()), 1.0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 * n + 1.6, 0.85 * n + 1.4))
    im = ax.imshow(vals, cmap="Blues", vmin=0, vmax=vmax)
    for i in range(n):
        for j in range(n):
            text = f"{100 * vals[i, j]:.0f}%" if normalize else f"{int(vals[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if vals[i, j] > 0.55 * vmax else "black")
    ax.set_xticks(range(n), list(classes), rotation=35, ha="right")
    ax.set_yticks(range(n), [f"{c} ({int(s)})" for c, s in zip(classes, support, strict=True)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)")
    ax.set_title(title or ("confusion matrix, row-normalised" if normalize else "confusion matrix"), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_per_class_metrics(per_class: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Grouped bars of precision, recall and F1 per class (support under each class name)."""
    import numpy as np

    plt = _pyplot()
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, key in enumerate(("precision", "recall", "f1")):
        vals = [per_class[c][key] for c in names]
        bars = ax.bar(x + (k - 1) * 0.27, vals, 0.27, label="F1" if key == "f1" else key)
        ax.bar_label(bars, [f"{100 * v:.0f}" for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, [f"{c}\n(n={per_class[c]['support']})" for c in names])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.legend(loc="upper left", ncols=3, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "per-class metrics", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_reliability_diagram(bins: list[dict[str, Any]], ece: float, path: str | Path, title: str = "") -> None:
    """Accuracy vs confidence per bin (a calibrated model follows the diagonal), with the images per bin
    below; ``bins`` from ``evaluate.calibration_bins``."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [x for x in bins if x["count"]]
    width = bins[0]["hi"] - bins[0]["lo"]
    a.bar([x["lo"] for x in full], [x["accuracy"] for x in full], width, align="edge", edgecolor="black",
          linewidth=0.5, label="accuracy")
    # mean confidence as a tick per bin: the bar/tick gap shows over- (tick above) or under-confidence
    a.scatter([x["lo"] + width / 2 for x in full], [x["confidence"] for x in full], marker="_", s=260,
              linewidths=2.5, color="tab:red", zorder=3, label="mean confidence")
    a.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    a.set_ylabel("accuracy")
    a.legend(loc="upper left", fontsize=8)
    a.set_title(f"{title + ': ' if title else ''}ECE {100 * ece:.1f}% ({len(bins)} bins)", fontsize=10)
    b.bar([x["lo"] for x in bins], [x["count"] for x in bins], width, align="edge", color="gray")
    b.set_xlabel("confidence (top-class probability)")
    b.set_ylabel("images")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_confident_mistakes(faces, true: list[str], pred: list[str], confidence: list[float], path: str | Path,
                            title: str = "") -> None:
    """Grid of 48x48 faces (M, 48, 48) uint8, one row per true class, each labelled with its wrong
    prediction and confidence; rows keep the order given (most confident first). Drawn as one mosaic image
    (one axes instead of M) so it renders in a fraction of a second."""
    import numpy as np

    plt = _pyplot()
    rows = list(dict.fromkeys(true))
    cols = max(true.count(r) for r in rows)
    size = faces.shape[1]
    top, gap = 14, 6  # room above each face for its label, space between faces
    ch, cw = size + top, size + gap
    canvas = np.full((len(rows) * ch, cols * cw), 255, np.uint8)
    seen = {r: 0 for r in rows}
    labels = []
    for face, t, p, c in zip(faces, true, pred, confidence, strict=True):
        i, j = rows.index(t), seen[t]
        seen[t] += 1
        y, x = i * ch + top, j * cw + gap // 2
        canvas[y:y + size, x:x + size] = face
        labels.append((x + size / 2, y - 2, f"{p} {100 * c:.0f}%"))
    fig, ax = plt.subplots(figsize=(cols * 0.95 + 1.0, len(rows) * 1.2 + 0.6))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for x, y, text in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks([])
    ax.set_yticks([i * ch + top + size / 2 for i in range(len(rows))], [f"true\n{r}" for r in rows], fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    ax.set_title(title or "most confident mistakes", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_learning_curves_if_logged(history: list[dict[str, Any]], path: str | Path) -> bool:
    """Learning curves when ``history`` has the per-epoch keys the training loop logs; False (no file)
    when a model carries no usable log."""
    need = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_acc_flip")
    if not history or not all(all(h.get(k) is not None for k in need) for h in history):
        return False
    plot_learning_curves(history, path)
    return True


def write_evaluation_xlsx(models: list[dict[str, Any]], comparisons: list[dict[str, Any]], path: str | Path) -> None:
    """report.xlsx: a Summary sheet, per model a per-class table and the confusion matrix (counts and row
    fractions), and a Comparison sheet when several models were evaluated."""
    import io
    from operator import itemgetter

    from openpyxl import Workbook
    from openpyxl.styles import Font

    from .checkpoint import atomic_write_bytes

    bold = Font(bold=True)
    wb = Workbook()
    ws = wb.active
    ws.title = "Summary"
    ws.append(["", *[m["label"] for m in models]])
    rows = [("model", lambda m: m["model"]["name"]), ("file", lambda m: m["model"]["file"]),
            ("sha256", lambda m: m["model"]["sha256"]), ("runtime", lambda m: m["runtime"]),
            ("device", lambda m: m["device"]), ("data", lambda m: m["data"]["path"]),
            ("split", lambda m: m["data"]["split"]), ("images", lambda m: m["count"]), ("TTA", lambda m: m["tta"])]
    rows += [(k, itemgetter(k)) for k in
             ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top2_accuracy", "ece", "nll")]
    rows += [("predict seconds", lambda m: m["seconds"]["predict"])]
    for name, get in rows:
        ws.append([name, *[get(m) for m in models]])
    for m in models:
        sfx = f" {m['label']}" if len(models) > 1 else ""
        pc = wb.create_sheet(f"Per class{sfx}")
        pc.append(["class", "precision", "recall", "f1", "support", "predicted"])
        for c, v in m["per_class"].items():
            pc.append([c, v["precision"], v["recall"], v["f1"], v["support"], v["predicted"]])
        pc.append([])
        pc.append(["accuracy", None, None, m["accuracy"], m["count"]])
        pc.append(["macro avg", m["macro_precision"], m["macro_recall"], m["macro_f1"], m["count"]])
        pc.append(["weighted avg", m["weighted_precision"], m["weighted_recall"], m["weighted_f1"], m["count"]])
        cm_sheet = wb.create_sheet(f"Confusion matrix{sfx}")
        cm_frac = wb.create_sheet(f"Confusion row fraction{sfx}")
        for sheet in (cm_sheet, cm_frac):
            sheet.append(["true \\ predicted", *m["classes"]])
        for c, row in zip(m["classes"], m["confusion_matrix"], strict=True):
            cm_sheet.append([c, *row])
            total = sum(row)
            cm_frac.append([c, *[(v / total if total else 0.0) for v in row]])
        for sheet in (pc, cm_sheet, cm_frac):
            for cell in sheet[1]:
                cell.font = bold
            sheet.column_dimensions["A"].width = 18
    if comparisons:
        cs = wb.create_sheet("Comparison")
        cs.append(["comparison", "metric", "A value", "B value", "B - A"])
        for comp in comparisons:
            a = next(m for m in models if m["label"] == comp["a"])
            b = next(m for m in models if m["label"] == comp["b"])
            pair = f"{comp['a']} vs {comp['b']}"
            for k, d in comp["difference"].items():
                cs.append([pair, k, a[k], b[k], d])
            for c, d in comp["recall_difference"].items():
                cs.append([pair, f"recall {c}", a["per_class"][c]["recall"], b["per_class"][c]["recall"], d])
            t = comp["mcnemar"]
            cs.append([pair, f"McNemar p-value ({t['method']})", t["b"], t["c"], t["p_value"]])
        for cell in cs[1]:
            cell.font = bold
    for cell in wb["Summary"][1]:
        cell.font = bold
    wb["Summary"].column_dimensions["A"].width = 18
    buf = io.BytesIO()
    wb.save(buf)
    atomic_write_bytes(Path(path), buf.getvalue())


_REPORT_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#555}table{border-collapse:collapse;margin:.6rem 0}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f4f6f8}tr.total td{font-weight:600;background:#fafafa}
.pos{color:#11772d}.neg{color:#b3261e}.verdict{padding:.5rem .8rem;background:#f4f6f8;border-left:4px solid #888}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:1rem;align-items:start}
figure{margin:0}figure.wide{grid-column:1/-1}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem}pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem}
code{background:#f6f8fa;padding:0 .2rem}
"""


def write_evaluation_html(models: list[dict[str, Any]], comparisons: list[dict[str, Any]],
                          figures: list[list[tuple[str, str]]], folder: str | Path, path: str | Path) -> None:
    """report.html: ONE self-contained file (PNG figures from ``folder`` embedded as base64 data URIs,
    inline CSS, no script, no external reference) readable offline. ``figures[i]`` is the (caption, file
    name) list of model i."""
    import base64
    import html
    import json

    from .checkpoint import atomic_write_bytes

    e = html.escape

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def signed(x: float, lower_is_better: bool = False) -> str:
        good = -x if lower_is_better else x
        return f'<span class="{"pos" if good > 0 else "neg" if good < 0 else ""}">{100 * x:+.1f}</span>'

    def figure(name: str, caption: str) -> str:
        raw = (Path(folder) / name).read_bytes()
        width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")  # PNG IHDR
        wide = ' class="wide"' if height and width / height > 1.6 else ""  # bar charts, curves: full row
        data = base64.b64encode(raw).decode("ascii")
        return (f'<figure{wide}><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>")

    first = models[0]
    d = first["data"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>emolens evaluation: {e(', '.join(m['model']['name'] for m in models))} on "
           f"{e(d['split'])}</title>", f"<style>{_REPORT_CSS}</style></head><body>",
           "<h1>emolens evaluation report</h1>",
           f'<p class="meta">Data <code>{e(d["path"])}</code>, split <b>{e(d["split"])}</b>, {d["count"]} '
           f'images; test-time augmentation <b>{e(first["tta"])}</b>; created {e(first["created"])} by emolens '
           f'{e(first["emolens_version"])}.</p>']
    keys = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
            ("weighted_f1", "weighted F1"), ("top2_accuracy", "top-2 accuracy"),
            ("ece", f"expected calibration error ({first['ece_bins']} bins)")]
    out.append("<h2>Summary</h2><table><tr><th>metric</th>"
               + "".join(f"<th>{e(m['label']) + ': ' if len(models) > 1 else ''}{e(m['model']['name'])}</th>"
                         for m in models) + "</tr>")
    for k, name in keys:
        out.append(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{pct(m[k])}</td>" for m in models) + "</tr>")
    out.append("<tr><td>negative log-likelihood</td>" + "".join(f"<td>{m['nll']:.3f}</td>" for m in models) + "</tr>")
    out.append("<tr><td>runtime, device</td>"
               + "".join(f"<td>{e(m['runtime'])}, {e(m['device'])}</td>" for m in models) + "</tr>")
    out.append("<tr><td>prediction time</td>" + "".join(
        f"<td>{m['seconds']['predict']:.1f} s ({m['images_per_second']} img/s)</td>" for m in models) + "</tr>")
    out.append("</table>")
    for comp in comparisons:
        a = next(m for m in models if m["label"] == comp["a"])
        b = next(m for m in models if m["label"] == comp["b"])
        t = comp["mcnemar"]
        out.append(f"<h2>Comparison: {e(comp['a'])} vs {e(comp['b'])}</h2><table><tr><th>metric</th>"
                   f"<th>{e(comp['a'])}</th><th>{e(comp['b'])}</th><th>{e(comp['b'])} - {e(comp['a'])} "
                   "(points)</th></tr>")
        for k, name in keys:
            out.append(f"<tr><td>{e(name)}</td><td>{pct(a[k])}</td><td>{pct(b[k])}</td>"
                       f"<td>{signed(comp['difference'][k], lower_is_better=k == 'ece')}</td></tr>")
        for c, diff in comp["recall_difference"].items():
            out.append(f"<tr><td>recall {e(c)}</td><td>{pct(a['per_class'][c]['recall'])}</td>"
                       f"<td>{pct(b['per_class'][c]['recall'])}</td><td>{signed(diff)}</td></tr>")
        verdict = (f"significant at {comp['alpha']:g}: the difference is unlikely to be chance"
                   if comp["significant"] else f"not significant at {comp['alpha']:g}: the difference may be noise")
        out.append(f'</table><p class="verdict">McNemar\'s paired test ({e(t["method"])}): only {e(comp["a"])} '
                   f'right on {t["b"]} images, only {e(comp["b"])} right on {t["c"]}, both right on '
                   f'{comp["both_right"]}, both wrong on {comp["both_wrong"]}; p = {t["p_value"]:.4g}, '
                   f"<b>{e(verdict)}</b>.</p>")
    for m, figs in zip(models, figures, strict=True):
        ident = m["model"]
        out.append(f'<h2 id="model-{e(m["label"])}">{e(m["label"]) + ": " if len(models) > 1 else ""}'
                   f'{e(ident["name"])} (<code>{e(ident["file"])}</code>)</h2>')
        out.append("<h3>Per class</h3><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                   "<th>support</th><th>predicted</th></tr>")
        for c, v in m["per_class"].items():
            out.append(f"<tr><td>{e(c)}</td><td>{pct(v['precision'])}</td><td>{pct(v['recall'])}</td>"
                       f"<td>{pct(v['f1'])}</td><td>{v['support']}</td><td>{v['predicted']}</td></tr>")
        out.append(f'<tr class="total"><td>accuracy</td><td></td><td></td><td>{pct(m["accuracy"])}</td>'
                   f'<td>{m["count"]}</td><td></td></tr>')
        for name, p in (("macro avg", "macro"), ("weighted avg", "weighted")):
            out.append(f'<tr class="total"><td>{name}</td><td>{pct(m[p + "_precision"])}</td>'
                       f'<td>{pct(m[p + "_recall"])}</td><td>{pct(m[p + "_f1"])}</td><td>{m["count"]}</td>'
                       "<td></td></tr>")
        out.append("</table>")
        out.append('<div class="figs">')
        out += [figure(name, caption) for caption, name in figs]
        out.append("</div>")
        out.append("<h3>Model identity</h3><table>")
        for k in ("name", "file", "sha256", "runtime"):
            out.append(f"<tr><td>{k}</td><td><code>{e(str(ident.get(k, '')))}</code></td></tr>")
        out.append(f"<tr><td>device</td><td>{e(m['device'])}</td></tr>")
        if ident.get("twin"):
            tw = ident["twin"]
            out.append(f"<tr><td>ONNX/checkpoint pair</td><td><code>{e(tw['onnx'])}</code> "
                       f"{'was' if tw['match'] else 'was NOT'} exported from <code>{e(tw['pt'])}</code></td></tr>")
        out.append(f"<tr><td>epochs in training log</td><td>{ident.get('epochs_logged', 0)}</td></tr></table>")
        extra = {k: ident[k] for k in ("config", "metrics", "kwargs", "metadata") if ident.get(k)}
        if extra:
            out.append("<details><summary>configuration and metrics recorded in the model</summary>"
                       f"<pre>{e(json.dumps(extra, indent=1, default=str))}</pre></details>")
    out.append("<h2>How to read this</h2><ul>"
               "<li>Precision: of the faces predicted as a class, the share that are; recall: of the faces of a "
               "class, the share found. F1 is their harmonic mean. Undefined values count as 0.</li>"
               "<li>Macro averages weigh every class equally (classes present in the labels or predictions); "
               "weighted averages weigh them by support; balanced accuracy is the mean recall over classes "
               "with support.</li>"
               "<li>Expected calibration error: the top-class confidence is binned; the gap between each bin's "
               "accuracy and mean confidence, weighted by its size, summed.</li>"
               "<li>McNemar's test uses only the images where exactly one model is right (exact binomial "
               "below 25 such images, chi-square with continuity correction above).</li></ul>"
               '<p class="meta">Everything is embedded in this one file; it reads offline.</p></body></html>')
    atomic_write_bytes(Path(path), "\n".join(out).encode("utf-8"))


# ---------------------------------------------------------------------------------------------- terminal


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def print_report(result: Mapping[str, Any], console=None) -> None:
    """The classification report of ``emolens evaluate`` (one model) or the side-by-side comparison (several)
    as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .preprocess import CLASSES

    console = console or Console()
    models = getattr(result, "models", None) or result.get("models") or [result]  # an Evaluation, or its dict
    d = models[0]["data"]
    head = escape(f"{d['path']} [{d['split']}], {d['count']} images, TTA {models[0]['tta']}")
    for m in models:
        t = Table(title=escape(f"{m['label'] + ': ' if len(models) > 1 else ''}{m['model']['name']} "
                               f"({m['model']['file']}, {m['runtime']} on {m['device']}) on ") + head,
                  title_justify="left")
        for col in ("class", "precision %", "recall %", "F1 %", "support"):
            t.add_column(col, justify="left" if col == "class" else "right")
        for c, v in m["per_class"].items():
            t.add_row(c, _pct(v["precision"]), _pct(v["recall"]), _pct(v["f1"]), str(v["support"]))
        t.add_section()
        t.add_row("accuracy", "", "", _pct(m["accuracy"]), str(m["count"]))
        t.add_row("macro avg", _pct(m["macro_precision"]), _pct(m["macro_recall"]), _pct(m["macro_f1"]),
                  str(m["count"]))
        t.add_row("weighted avg", _pct(m["weighted_precision"]), _pct(m["weighted_recall"]),
                  _pct(m["weighted_f1"]), str(m["count"]))
        console.print(t)
        console.print(f"balanced accuracy {_pct(m['balanced_accuracy'])}%  top-2 {_pct(m['top2_accuracy'])}%  "
                      f"ECE {_pct(m['ece'])}%  NLL {m['nll']:.3f}  predict {m['seconds']['predict']:.1f} s "
                      f"({m['images_per_second']} img/s)", markup=False, highlight=False)
    for comp in result.get("comparisons") or []:
        a = next(m for m in models if m["label"] == comp["a"])
        b = next(m for m in models if m["label"] == comp["b"])
        t = Table(title=f"{comp['a']} vs {comp['b']} on the same {d['count']} images", title_justify="left")
        for col in ("metric", f"{comp['a']} %", f"{comp['b']} %", f"{comp['b']} - {comp['a']} (points)"):
            t.add_column(col, justify="left" if col == "metric" else "right")
        for key, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                          ("macro_f1", "macro F1"), ("top2_accuracy", "top-2 accuracy"), ("ece", "ECE")):
            t.add_row(name, _pct(a[key]), _pct(b[key]), f"{100 * comp['difference'][key]:+.1f}")
        t.add_section()
        for c in CLASSES:
            t.add_row(f"recall {c}", _pct(a["per_class"][c]["recall"]), _pct(b["per_class"][c]["recall"]),
                      f"{100 * comp['recall_difference'][c]:+.1f}")
        console.print(t)
        console.print(mcnemar_sentence(comp), markup=False, highlight=False)


def mcnemar_sentence(comp: dict[str, Any]) -> str:
    """One line a person can act on: the discordant counts, the p-value and what it means."""
    t = comp["mcnemar"]
    verdict = (f"significant at {comp['alpha']:g}: {comp['b'] if t['c'] > t['b'] else comp['a']} is better "
               "beyond chance" if comp["significant"]
               else f"not significant at {comp['alpha']:g}: the difference may be noise")
    return (f"McNemar ({t['method']}): only {comp['a']} right on {t['b']} images, only {comp['b']} right on "
            f"{t['c']}; p = {t['p_value']:.4g}, {verdict}")

"""report.html: one self-contained page (images inlined) per leaderboard folder, with the PNGs written beside it."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from mito.bench.errors import BenchError
from mito.bench.fewshot import main_rows
from mito.bench.leaderboard import Leaderboard, load_leaderboard
from mito.bench.stats import prediction_positive
from mito.core.io import atomic_write, safe_name
from mito.core.metrics import calibrated_ece
from mito.core.progress import status
from mito.core.tasks import recorded_positive
from mito.core.validation import as_dict
from mito.core.version import __version__
from mito.report.fewshot import report_section
from mito.report.invariance import invariance_section
from mito.report.leaderboard import paired_cells
from mito.report.mpl import pyplot
from mito.report.proxy import proxy_section
from mito.report.shift import shift_section
from mito.report.stat_figures import cd_figure, reliability_figure
from mito.report.tables import p_value
from mito.report.umap import PNG_SOFTWARE

HEAD_KIND = "head"
FT_KINDS = ("lora", "linear-probe", "full")


def _label(r: pd.Series, width: int = 60) -> str:
    s = f"{r['backbone']} {r['features']} {r['head']}" + (f" σ={r['noise']:g}" if r.get("noise") else "")
    return s if len(s) <= width else s[: width - 1] + "…"


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110), ".png")
    pyplot().close(fig)
    return path


def time_comparison(rows: pd.DataFrame) -> dict[str, Any]:
    """Train seconds per fold of fine-tuning rows vs head rows (best head, median head) and their ratios."""
    heads = rows[rows["kind"] == HEAD_KIND]
    out: dict[str, Any] = {}
    if heads.empty:
        return out
    best = heads.iloc[0]
    out["best_head"] = {"label": _label(best, 200), "train_seconds": float(best["train_seconds"])}
    out["median_head_train_seconds"] = float(heads["train_seconds"].median())
    for _, r in rows[rows["kind"].isin(FT_KINDS)].iterrows():
        s = float(r["train_seconds"])
        seen = float(r.get("samples_seen") or 0.0)
        rate = seen / s if seen and s > 0 else math.nan
        out.setdefault("finetune", []).append(
            {
                "samples_per_second": rate,
                "epoch_seconds": float(r["n_train"]) / rate if rate == rate and rate > 0 else math.nan,
                "label": _label(r, 200),
                "kind": r["kind"],
                "train_seconds": s,
                "budget": r.get("budget", ""),
                "ratio_vs_best_head": s / max(float(best["train_seconds"]), 1e-9),
                "ratio_vs_median_head": s / max(out["median_head_train_seconds"], 1e-9),
            }
        )
    return out


# ------------------------------------------------------------------ figures
def chance_level(metric: str, n_classes: int) -> float | None:
    """What guessing scores: 1/k balanced accuracy, 0.5 AUROC, 0 kappa (None where it depends on the class mix)."""
    return {"balanced_accuracy": 1.0 / max(n_classes, 1), "auroc": 0.5, "kappa": 0.0}.get(metric)


def bar_chart(rows: pd.DataFrame, metric: str, path: Path, top: int = 20, n_classes: int = 2) -> Path:
    """Bars of the main metric (mean over folds, bootstrap 95% CI as error bars): the best rows, plus the best row
    of every other backbone and every fine-tuning row, so controls and LoRA always show."""
    plt = pyplot()
    extra = pd.concat([rows.drop_duplicates("backbone"), rows[rows["kind"].isin(FT_KINDS)]])
    r = pd.concat([rows.head(top), extra]).drop_duplicates("row_id").sort_values("rank").iloc[::-1]
    vals = r[metric].to_numpy(float)
    lo = np.clip(vals - r["ci_low"].to_numpy(float), 0, None)
    hi = np.clip(r["ci_high"].to_numpy(float) - vals, 0, None)
    err = np.nan_to_num(np.vstack([lo, hi]))
    colors = [
        "#d95f02" if k in FT_KINDS else ("#999999" if str(b).startswith("random_") else "#1b9e77") for k, b in zip(r["kind"], r["backbone"])
    ]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(r) + 1.2))
    ax.barh(range(len(r)), vals, xerr=err, color=colors, capsize=2, error_kw={"lw": 0.8})
    ax.set_yticks(range(len(r)), [_label(x) for _, x in r.iterrows()], fontsize=7)
    finite = vals[np.isfinite(vals)]
    ax.set_xlim(min(0.0, float(finite.min()) - 0.05) if finite.size else 0.0, 1.0)
    level = chance_level(metric, n_classes)
    if level is not None:
        ax.axvline(level, color="#444444", ls="--", lw=0.9, zorder=3)
        ax.text(level, len(r) - 0.4, f" chance {level:.2g}", fontsize=7, va="bottom", ha="left", color="#444444")
    ax.set_xlabel(f"{metric} (mean over folds; bars: bootstrap 95% CI; dashed: chance)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def roc_figure(rows: pd.DataFrame, lb: Leaderboard, path: Path, top: int = 5) -> Path | None:
    """ROC curves of the best rows (test predictions pooled over folds; the recorded positive class when binary,
    micro-average one-vs-rest when multi-class)."""
    from sklearn.metrics import auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    picked = list(rows.head(top).iterrows())
    ft = rows[rows["kind"].isin(FT_KINDS)]
    picked += [x for x in ft.head(2).iterrows() if x[1]["row_id"] not in {p[1]["row_id"] for p in picked}]
    drawn = 0
    for _, r in picked:
        p = lb.predictions.get(r["row_id"])
        if p is None:
            continue
        k = p["proba"].shape[1]
        if k == 2:
            pos = prediction_positive(p)
            fpr, tpr, _ = roc_curve(np.asarray(p["y"]) == pos, p["proba"][:, pos])
        else:
            onehot = np.eye(k)[p["y"]]
            fpr, tpr, _ = roc_curve(onehot.ravel(), p["proba"].ravel())
        table = r.get("auroc")
        folds = f", table {float(table):.3f}" if table is not None and np.isfinite(float(table)) else ""
        ax.plot(fpr, tpr, lw=1.2, ls="--" if r["kind"] in FT_KINDS else "-", label=f"{_label(r, 40)} (pooled {auc(fpr, tpr):.3f}{folds})")
        drawn += 1
    if not drawn:
        pyplot().close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    what = f"positive class: {positive_of(picked[0][1], lb)}" if k == 2 else "micro-average"
    ax.set_title(
        f"ROC, test predictions pooled over folds ({what})" + "\nlegend: pooled AUROC, and the table's mean over folds", fontsize=8
    )
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def counts_note(r: pd.Series) -> str:
    """What a row's confusion counts are: one fold's test set, or test sets summed over k folds."""
    k = int(r.get("n_folds") or 1)
    if k == 1:
        return "counts: 1 fold's test set"
    shared = f" (one test split, counted {k} times)" if r.get("cv") == "split" else ""
    return f"counts summed over {k} folds{shared}"


def confusion_figure(rows: pd.DataFrame, path: Path, top: int = 3) -> Path | None:
    """Confusion matrices (counts summed over each row's folds, as each title says; shaded by row share) of the best rows and the best fine-tuned row."""
    plt = pyplot()
    picked = [r for _, r in rows.head(top).iterrows()]
    ft = rows[rows["kind"].isin(FT_KINDS)]
    if len(ft) and ft.iloc[0]["row_id"] not in {r["row_id"] for r in picked}:
        picked.append(ft.iloc[0])
    picked = [r for r in picked if isinstance(r.get("confusion_matrix"), list)]
    if not picked:
        return None
    k = len(picked[0]["classes"])
    panel = max(3.2, 0.5 * k + 2.2)
    fig, axes = plt.subplots(1, len(picked), figsize=(panel * len(picked), max(3.2, 0.45 * k + 2) + 0.6), squeeze=False)
    for ax, r in zip(axes[0], picked):
        cm = np.asarray(r["confusion_matrix"], dtype=float)
        share = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
        names = [str(c)[:14] for c in r["classes"]]
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        held = r.get("held_out")
        where = f"tested on {held}" if isinstance(held, str) and held else ""
        wrap = max(28, int(panel * 10.5))  # characters of 7 pt text over one (square) matrix
        lines = [textwrap.fill(t, wrap, break_on_hyphens=False) for t in (_label(r, 2 * wrap), where, counts_note(r)) if t]
        ax.set_title("\n".join(lines), fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def time_figure(rows: pd.DataFrame, path: Path) -> Path | None:
    """Training seconds per fold (log scale): every head on the best feature set vs the fine-tuning runs."""
    plt = pyplot()
    heads = rows[rows["kind"] == HEAD_KIND]
    ft = rows[rows["kind"].isin(FT_KINDS)]
    if heads.empty or ft.empty:
        return None
    best_fs = heads.iloc[0][["backbone", "features"]].tolist()
    on_best = heads[(heads["backbone"] == best_fs[0]) & (heads["features"] == best_fs[1])].drop_duplicates("head")
    r = pd.concat([on_best, ft]).sort_values("train_seconds")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(r) + 1.3))
    colors = ["#d95f02" if k in FT_KINDS else "#1b9e77" for k in r["kind"]]
    ax.barh(range(len(r)), r["train_seconds"].clip(lower=1e-3), color=colors)
    ax.set_xscale("log")
    ax.set_yticks(range(len(r)), [_label(x, 50) for _, x in r.iterrows()], fontsize=7)
    for i, s in enumerate(r["train_seconds"]):
        ax.text(max(s, 1e-3) * 1.1, i, f"{s:.3g} s", va="center", fontsize=7)
    ax.set_xlabel("training seconds per fold (log scale); heads exclude the one-off embedding pass")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------ html
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1400px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
.tw{overflow-x:auto;max-width:100%;margin:.5rem 0}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ddd;padding:3px 5px;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom;max-width:7rem}td .sd{color:#666;font-size:11px}
td.w{white-space:normal;text-align:left;min-width:9rem;max-width:22rem;font-size:11px}.figs{display:flex;flex-wrap:wrap;gap:.5rem;align-items:flex-start}figure{margin:0}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.ft{background:#fff3e6}tr.rnd{color:#888}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}.meta{color:#555;font-size:13px}.warn{color:#8a4b00;font-size:13px}code{background:#f4f4f4;padding:0 3px}
"""


def scroll_tables(page: str) -> str:
    """Every table in a box that scrolls sideways, so a wide leaderboard never widens the page."""
    return page.replace("<table>", "<div class='tw'><table>").replace("</table>", "</table></div>")


def _written_here(path: Path, folder: Path) -> bool:
    """A regular file directly in ``folder`` (never a link: a report inlines nothing from outside its folder)."""
    return not path.is_symlink() and path.is_file() and path.resolve().parent == folder.resolve()


def _made_by_mito(path: Path) -> bool:
    """A PNG that mito's UMAP wrote (its Software text chunk), not any picture a user left in the folder."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and str(im.info.get("Software", "")).startswith(PNG_SOFTWARE)
    except OSError:
        return False


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption class="meta">{html.escape(path.name)}</figcaption></figure>'


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, std: Any = None, digits: int = 3) -> str:
    if _missing(v):
        return "–"
    return f"{v:.{digits}f}" + ("" if _missing(std) else f" ± {std:.{digits}f}")


def _cell(v: Any, std: Any = None) -> str:
    """HTML of a metric cell: the mean, and its ± std over folds on a second, smaller line (a narrower column)."""
    if _missing(v):
        return "–"
    return f"{v:.3f}" + ("" if _missing(std) else f"<br><span class='sd'>± {std:.3f}</span>")


HEADERS = {
    "ci": "95% CI",
    "balanced_accuracy": "balanced accuracy",
    "weighted_f1": "weighted F1",
    "pr_auc": "PR-AUC",
    "auroc": "AUROC",
    "kappa": "kappa",
    "ece": "ECE",
    "ece_equal_mass": "ECE (equal-mass)",
    "brier": "Brier",
    "auroc_delong": "AUROC 95% CI (DeLong)",
    "train_seconds": "train s per fold",
    "train/test": "train / test tiles",
}


def _table(rows: pd.DataFrame, metric: str) -> str:
    cols = _table_columns(rows, metric)
    head = "".join(f'<th class="{"l" if c in LEFT else ""}">{html.escape(HEADERS.get(c, c))}</th>' for c in cols)
    body = []
    for _, r in rows.iterrows():
        cells = [f'<td class="{"w" if c == "budget" else ("l" if c in LEFT else "")}">{_table_cell(r, c)}</td>' for c in cols]
        cls = "ft" if r["kind"] in FT_KINDS else ("rnd" if str(r["backbone"]).startswith("random_") else "")
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


LEFT = {"backbone", "features", "head", "tested on", "budget"}  # left-aligned columns of the HTML table


def _table_columns(rows: pd.DataFrame, metric: str) -> list[str]:
    """The HTML leaderboard's columns, of those the rows fill."""
    noisy = bool((rows["noise"].fillna(0) != 0).any())
    shifted = "held_out" in rows and bool((rows["held_out"].fillna("").astype(str) != "").any())  # --cv leave-group-out
    cols = ["rank", "backbone", "features", "head"] + (["noise"] if noisy else []) + (["tested on"] if shifted else [])
    cols += [metric, "ci"] + (["auroc_delong"] if "auroc_delong_low" in rows and rows["auroc_delong_low"].notna().any() else [])
    cols += ["Δ vs #1", "p vs #1"] if "p_vs_best" in rows else []
    cols += ["AUROC p vs #1"] if "auroc_p_vs_best" in rows and rows["auroc_p_vs_best"].notna().any() else []
    cols += [c for c in ("auroc", "kappa", "weighted_f1", "pr_auc") if c != metric]
    return cols + [c for c in ("ece", "ece_equal_mass", "brier") if c in rows] + ["train_seconds", "train/test", "budget"]


def _table_cell(r: pd.Series, c: str) -> str:
    """The HTML of row ``r``'s cell in column ``c``."""
    if c == "ci":
        return f"{html.escape(_fmt(r.get('ci_low')))}–<br>{html.escape(_fmt(r.get('ci_high')))}"
    if c == "auroc_delong":
        return f"{html.escape(_fmt(r.get('auroc_delong_low')))}–<br>{html.escape(_fmt(r.get('auroc_delong_high')))}"
    if c == "AUROC p vs #1":
        return html.escape(p_value(r.get("auroc_p_vs_best"))) if r.get("rank") != 1 else ""
    if c in ("Δ vs #1", "p vs #1"):
        return html.escape(paired_cells(r)["_delta" if c == "Δ vs #1" else "_p"])
    if c in ("balanced_accuracy", "auroc", "kappa", "weighted_f1", "pr_auc", "ece", "ece_equal_mass", "brier"):
        return _cell(r.get(c), r.get(f"{c}_std"))
    if c == "train_seconds":
        return html.escape(_fmt(r.get(c), digits=2))
    if c == "noise":
        return html.escape(f"{r.get(c, 0):g}")
    if c == "tested on":
        return html.escape(str(r.get("held_out") or "in-domain"))
    if c == "train/test":
        return html.escape(f"{r.get('n_train')}/{r.get('n_test')}")
    return html.escape(str(r.get(c, "")))


PAIRED_NOTE = (
    "Δ vs #1: the row's main metric minus the best row's; p vs #1: paired bootstrap over the same resampled test tiles, "
    "Holm-adjusted within the task; '(tie)' after p: not significantly worse at 0.05; AUROC p vs #1: DeLong's test (binary tasks), "
    "Holm-adjusted; † : the row and #1 scored different folds (a fine-tuning run on some of them), so Δ and p compare "
    "them on the folds both scored. AUROC 95% CI (DeLong): AUROC ± 1.96 DeLong standard errors, capped to [0, 1] "
    "(pROC's ci.auc), none where a class has fewer than 2 test cases. ECE: 15 equal-width bins (torchmetrics' calibration "
    "error; positive class when binary, top label otherwise), mean over folds; ECE (equal-mass): 15 equal-mass bins; "
    "Brier: scikit-learn's."
)


def ece_bias_line(rows: pd.DataFrame, lb: Leaderboard) -> str:
    """One sentence on ECE's upward bias at this task's fold size: the mean ECE of a perfectly calibrated model with
    the best row's own confidences (labels drawn to match them), per fold, averaged; '' without its predictions."""
    p = lb.predictions.get(str(rows.iloc[0]["row_id"]))
    if not p or "proba" not in p or not len(p["proba"]):
        return ""
    proba = np.asarray(p["proba"], np.float64)
    pos = prediction_positive(p) if proba.shape[1] == 2 else 1
    fold = np.asarray(p["fold"])
    bias = float(np.mean([calibrated_ece(proba[fold == f], pos) for f in np.unique(fold)]))
    n = round(len(fold) / np.unique(fold).size)
    return (
        f"ECE is biased upward on small test folds: a perfectly calibrated model with #1's confidences would still "
        f"score ECE {bias:.3f} on average at {n} test cases per fold (labels drawn 200 times), so ECE differences "
        "smaller than that say little. "
    )


def positive_of(row: pd.Series, lb: Leaderboard) -> str:
    """The positive class a two-class row was scored with: recorded, else (an older folder) its second class."""
    tasks = as_dict(lb.meta.get("tasks"))
    info = as_dict(tasks.get(row["task"]))
    pos = row.get("positive")
    if isinstance(pos, str) and pos:
        return pos
    return str(recorded_positive(info, row.get("classes"))[0])


def positive_sentence(tm: Any, classes: list[Any]) -> str:
    """'Positive class: Atypical (minority of the training rows).' for a two-class task, '' otherwise."""
    pos, source = recorded_positive(tm, classes)
    return f"Positive class: {pos} ({source}): PR-AUC, ECE, Brier, ROC, reliability and DeLong use it. " if pos is not None else ""


def per_class_table(rows: pd.DataFrame, top: int = 5) -> str:
    """Recall and precision of each class (mean over folds) for the best rows of a multi-class task."""
    rows = (
        rows[[isinstance(v, dict) for v in rows.get("per_class", pd.Series(None, index=rows.index))]]
        if "per_class" in rows
        else rows.iloc[:0]
    )
    if rows.empty:
        return ""
    classes = list(rows.iloc[0]["per_class"])
    head = "<th>rank</th><th class='l'>row</th>" + "".join(f"<th>{html.escape(str(c))}<br>recall / precision</th>" for c in classes)
    body = []
    for _, r in rows.head(top).iterrows():
        cells = "".join(
            f"<td>{_fmt(r['per_class'].get(c, {}).get('recall'), digits=2)} / {_fmt(r['per_class'].get(c, {}).get('precision'), digits=2)}</td>"
            for c in classes
        )
        body.append(f"<tr><td>{html.escape(str(r['rank']))}</td><td class='l'>{html.escape(_label(r))}</td>{cells}</tr>")
    return (
        "<h3>Per class (mean over folds)</h3><p class='meta'>Recall (share of a class's tiles predicted as it) and precision "
        "(share of the tiles predicted as a class that are it; – when a fold never predicts it).</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def in_domain_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The normal rows: trained on every training tile (no K-shot rows) and tested in-domain (no shift rows)."""
    rows = main_rows(rows)
    return rows[rows["held_out"].fillna("") == ""] if "held_out" in rows else rows


def cd_section(rows: pd.DataFrame, d: Path) -> list[str]:
    """The critical-difference diagram across tasks (a bench of two or more tasks), as one report section."""
    got = cd_figure(rows, d / "critical_difference.png")
    if got is None:
        return []
    path, res, cs = got
    return [
        "<h2>Across tasks: critical-difference diagram</h2>"
        f"<p class='meta'>Shown: {html.escape(cs.caption)}. Each is ranked by its best row's main metric in each task (1 = best); "
        f"Friedman test over {res.n_tasks} tasks, Nemenyi critical difference {res.critical_difference:.2f} at α = {res.alpha:g}. "
        "With few tasks the CD is wide: a joined group is not evidence of equality.</p><div class='figs'>"
        + _img(path, "critical-difference diagram")
        + "</div>"
    ]


def build_report(out_dir: str | os.PathLike, top: int = 25, progress: bool = False) -> Path:
    """(Re)build ``out_dir/report.html`` and its PNGs from the leaderboard files (and any umap*.png) in that folder;
    ``progress``: a status line while the figures are drawn (after the folder was found sound)."""
    d = Path(out_dir)
    lb = load_leaderboard(d)
    if lb.rows.empty:
        raise BenchError(f"the leaderboard in {d} has no rows")
    n_tasks = lb.rows["task"].nunique()
    with status(
        f"writing report.html: {len(lb.rows)} rows of {n_tasks} task{'s' if n_tasks > 1 else ''}, a table and figures each ...", progress
    ):
        return _write_report(d, lb, top)


def _write_report(d: Path, lb: Leaderboard, top: int) -> Path:
    tasks_meta = as_dict(lb.meta.get("tasks"))
    sections, summary = [], {}
    for task in sorted(lb.rows["task"].unique()):
        section, summary[task] = _task_section(d, lb, task, as_dict(tasks_meta.get(task)), top)
        sections.append(section)
    sections += cd_section(in_domain_rows(lb.rows), d)
    proxy = proxy_section(lb.meta, d / "proxy_validity.png")
    sections += [proxy] if proxy else []
    store = as_dict(lb.meta.get("store"))
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mito bench report</title>"
        f"<style>{CSS}</style></head><body><h1>mito bench report</h1>"
        f"<p class='meta'>store <code>{html.escape(str(store.get('path', '')))}</code> ({html.escape(str(store.get('n_tiles', '?')))} tiles); "
        f"mito {__version__}; built {created}. Green: frozen backbone + head; orange: fine-tuned; grey: random-init control.</p>"
        + "".join(sections)
        + invariance_section(store.get("path"))
        + "</body></html>"
    )
    page = scroll_tables(page)
    atomic_write(d / "report.html", lambda p: Path(p).write_text(page, encoding="utf-8"), ".html")
    atomic_write(d / "report_summary.json", lambda p: Path(p).write_text(json.dumps(summary, indent=1, default=float)), ".json")
    return d / "report.html"


def _task_section(d: Path, lb: Leaderboard, task: str, tm: dict[str, Any], top: int) -> tuple[str, dict[str, Any]]:
    """One task's report section (its table, figures, shift, few-shot and UMAP parts) and its summary."""
    task_rows = lb.rows[lb.rows["task"] == task]
    rows = main_rows(task_rows)  # K-shot rows: the learning-curve section below; shift rows ranked per held-out group
    rows = rows.sort_values([c for c in ("held_out", "rank") if c in rows], kind="stable")
    metric = tm.get("main_metric", rows.iloc[0]["main_metric"])
    shift = shift_section(rows, metric, d / f"{safe_name(task, 'task')}_shift.png", lb.meta.get("shift"))
    if "held_out" in rows and (rows["held_out"].fillna("") == "").any():
        rows = rows[rows["held_out"].fillna("") == ""]  # the figures and table below are in-domain
    tc = time_comparison(rows)
    summary = {"best": rows.iloc[0][["backbone", "features", "head", metric, "ci_low", "ci_high", "auroc"]].to_dict(), "time": tc}
    n_classes = len(tm.get("classes") or rows.iloc[0].get("classes") or [0, 1])
    stem = safe_name(task, "task")  # a task name is the user's text: never a path
    figs = _task_figures(d, lb, rows, task, metric, stem, n_classes)
    umaps = _umaps(d, stem, lb)
    ratio = _finetune_ratios(tc)
    classes = ", ".join(map(str, tm.get("classes", rows.iloc[0].get("classes", []))))
    section = (
        f"<h2>Task <code>{html.escape(task)}</code></h2>"
        f"<p class='meta'>{html.escape(tm.get('description', ''))}. Classes: {html.escape(classes)}. "
        f"{html.escape(positive_sentence(tm, list(tm.get('classes', rows.iloc[0].get('classes', [])))))}"
        f"Ranked by {html.escape(metric)} (mean ± std over folds, bootstrap 95% CI over tiles). "
        f"Folds: {html.escape(tm.get('cv_description', ''))}; fingerprint {html.escape(str(tm.get('fold_fingerprint', ''))[:12])}. "
        f"{html.escape(PAIRED_NOTE)} {html.escape(ece_bias_line(rows, lb))}</p>"
        + (f"<p class='warn'>Note: {html.escape(tm['small_test'])}.</p>" if tm.get("small_test") else "")
        + _table(rows.head(top), metric)
        + (f"<details><summary>all {len(rows)} rows</summary>{_table(rows, metric)}</details>" if len(rows) > top else "")
        + (per_class_table(rows) if n_classes > 2 else "")
        + "<div class='figs'>"
        + "".join(_img(p, a) for p, a in figs)
        + "</div>"
        + shift
        + (f"<h3>Heads vs fine-tuning: training time</h3><ul>{ratio}</ul>" if ratio else "")
        + report_section(task_rows, metric, d / f"{stem}_fewshot.png", chance_level(metric, n_classes), _img)
        + ("<h3>UMAP</h3><div class='figs'>" + "".join(_img(p, p.stem) for p in umaps) + "</div>" if umaps else "")
    )
    return section, summary


def _task_figures(
    d: Path, lb: Leaderboard, rows: pd.DataFrame, task: str, metric: str, stem: str, n_classes: int
) -> list[tuple[Path | None, str]]:
    """A task's figures (drawn now) with their captions: bars, ROC, confusion, training time, reliability."""
    return [
        (bar_chart(rows, metric, d / f"{stem}_bars.png", n_classes=n_classes), f"{task}: {metric} with 95% CI"),
        (roc_figure(rows, lb, d / f"{stem}_roc.png"), f"{task}: ROC"),
        (confusion_figure(rows, d / f"{stem}_confusion.png"), f"{task}: confusion matrices"),
        (time_figure(rows, d / f"{stem}_time.png"), f"{task}: training time"),
        (
            reliability_figure(
                rows, lb.predictions, d / f"{stem}_reliability.png", positive_of(rows.iloc[0], lb) if n_classes == 2 else None
            ),
            f"{task}: reliability",
        ),
    ]


def _umaps(d: Path, stem: str, lb: Leaderboard) -> list[Path]:
    """The UMAP pictures of a task in the folder: its own, else (a one-task bench) every umap*.png mito wrote there."""
    if _written_here(d / f"umap_{stem}.png", d):
        return [d / f"umap_{stem}.png"]
    if len(lb.rows["task"].unique()) == 1:
        return [p for p in sorted(d.glob("umap*.png")) if _written_here(p, d) and _made_by_mito(p)]
    return []


def _finetune_ratios(tc: dict[str, Any]) -> str:
    """HTML list items: each fine-tuning run's training time against the heads'."""
    ratio = ""
    for f in tc.get("finetune", []):
        ratio += (
            f"<li><b>{html.escape(f['label'])}</b>: {f['train_seconds']:.1f} s per fold = "
            f"{f['ratio_vs_best_head']:.0f}× the best head ({tc['best_head']['train_seconds']:.2f} s), "
            f"{f['ratio_vs_median_head']:.0f}× the median head ({tc['median_head_train_seconds']:.2f} s); budget: {html.escape(str(f['budget']))}"
            + (
                f"; {f['samples_per_second']:.1f} training tiles/s, so one pass over the training set takes about {f['epoch_seconds']:.0f} s"
                if f["epoch_seconds"] == f["epoch_seconds"]
                else ""
            )
            + "</li>"
        )
    return ratio

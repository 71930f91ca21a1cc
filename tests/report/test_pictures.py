"""Pictures as users get them: every text inside its figure (UMAP and confusion titles), a critical-difference diagram
of at most CD_MAX_METHODS methods whose labels do not overprint, and a report page no wider than 1,280 px."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito.bench import BenchConfig, run_bench, save_leaderboard

FOUR = ["efficientnet_lite0:z1:rgb", "efficientnet_lite0:z1:gray", "efficientnet_lite0:z2:rgb", "efficientnet_lite0:z2:gray"]


def _inside(fig, tol: float = 0.01) -> list[str]:
    """What of ``fig`` lies outside its canvas (the drawn artists' tight box vs the figure's size, in inches)."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    out = []
    if box.x0 < -tol or box.y0 < -tol:
        out.append(f"left/bottom at ({box.x0:.2f}, {box.y0:.2f})")
    if box.x1 > w + tol or box.y1 > h + tol:
        out.append(f"right/top at ({box.x1:.2f}, {box.y1:.2f}) of {w:.2f} x {h:.2f}")
    return out


def _overlaps(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, ea) in enumerate(boxes) for b, eb in boxes[i + 1 :] if ea.overlaps(eb)]


@pytest.fixture(scope="module")
def wide_bench(amibr_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tasks, the four-variant feature set (long labels) and z1:rgb, two heads: a real leaderboard folder."""
    out = tmp_path_factory.mktemp("pictures") / "bench"
    lb = run_bench(
        BenchConfig(
            store=str(amibr_store),
            tasks=["mitosis", "dataset"],
            features=["+".join(FOUR), FOUR[0]],
            heads=["logreg", "knn"],
            n_folds=2,
            n_jobs=1,
            n_boot=20,
        ),
        progress=False,
    )
    save_leaderboard(lb, out)
    return out


def test_report_figures_keep_every_text_inside(wide_bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mito.report.html as rep

    figs = {}

    def keep(fig, path: Path) -> Path:
        figs[path.name] = fig
        return path

    monkeypatch.setattr(rep, "_save", keep)
    d = tmp_path / "b"
    shutil.copytree(wide_bench, d)
    rep.build_report(d)
    assert {"mitosis_confusion.png", "mitosis_bars.png", "mitosis_roc.png"} <= set(figs)
    titles = [ax.get_title() for ax in figs["mitosis_confusion.png"].axes]
    assert any("z1+z2:rgb+gray" in t for t in titles) and len(titles) == 3  # the long label is there, whole
    for name, fig in figs.items():
        assert not _inside(fig), (name, _inside(fig))


def test_umap_title_of_four_variants_fits() -> None:
    from mito.report.umap import scatter_figure, title_for

    title = title_for(FOUR, "mitosis", 48)
    assert "efficientnet_lite0 z1+z2:rgb+gray" in title  # one short name for the four variants
    emb = np.random.default_rng(0).normal(size=(48, 2))
    fig = scatter_figure(emb, pd.Series(["Atypical", "Normal"] * 24), title)
    assert not _inside(fig)
    keys = [f"backbone_with_a_long_name_{i}:z{i}:rgb" for i in range(6)]  # no product: every key listed, wrapped
    fig = scatter_figure(emb, pd.Series(["a", "b"] * 24), title_for(keys, "mitosis", 48))
    assert not _inside(fig)


def test_critical_difference_diagram_is_capped_and_readable(tmp_path: Path) -> None:
    from mito.bench.stats import friedman_nemenyi
    from mito.report.stat_figures import CD_MAX_METHODS, cd_axes, cd_figure, cd_scores

    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        [
            {
                "task": t,
                "backbone": "efficientnet_lite0",
                "features": f"z{z}:{c}",
                "head": h,
                "main_metric": "balanced_accuracy",
                "balanced_accuracy": rng.random(),
            }
            for t in ("mitosis", "dataset", "phase")
            for z in (1, 2, 3)
            for c in ("rgb", "gray", "rgb+gray")
            for h in ("logreg", "knn", "mlp", "linear", "lightgbm")
        ]
    )
    cs = cd_scores(rows)
    assert cs.n_all == 45 and len(cs.methods) == CD_MAX_METHODS and "12 best of 45" in cs.caption
    assert cs.scores.shape == (3, CD_MAX_METHODS)
    res = friedman_nemenyi(cs.scores, cs.methods)
    fig = cd_axes(res, "title")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    ticks = [t for t in ax.texts if re.fullmatch(r"\d+", t.get_text())]
    names = [t for t in ax.texts if t.get_text().endswith(")") and "(" in t.get_text()]
    assert len(ticks) == CD_MAX_METHODS and len(names) == CD_MAX_METHODS
    assert not _overlaps(ticks, r) and not _overlaps(names, r)
    got = cd_figure(rows, tmp_path / "cd.png")
    assert got is not None and got[0].stat().st_size > 5000 and len(got[1].methods) == CD_MAX_METHODS


def test_report_page_fits_1280_pixels(wide_bench: Path, tmp_path: Path) -> None:
    from mito.report import build_report

    d = tmp_path / "b"
    shutil.copytree(wide_bench, d)
    page = build_report(d).read_text()
    assert " tie<" not in page and "1 tie" not in page  # p-values print as 1.000 (tie), never "1 tie"
    assert page.count("<table>") == page.count("<div class='tw'><table>") > 0  # each table scrolls in its own box
    assert "overflow-x:auto" in page and "Shown: every backbone + features + head" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium here to measure the page")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>document.title='W'+document.documentElement.scrollWidth;</script></body>"))
    r = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    width = int(re.search(r"<title>W(\d+)</title>", r.stdout).group(1))
    assert width <= 1280, width


def _attention_figure(slide: Path, a: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The figure _attention_heatmap draws for attention ``a`` over the 4 x 3 crops of a demo toy slide."""
    import mito.report.slides as sl
    from mito.app.demo import CROP_PX, GRID, MARGIN

    real, figs = sl.pyplot(), []

    class Keep:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def subplots(self, *args, **kw):
            fig, ax = real.subplots(*args, **kw)
            figs.append(fig)
            return fig, ax

    monkeypatch.setattr(sl, "pyplot", lambda: Keep())
    boxes = [(MARGIN + cx * CROP_PX, MARGIN + cy * CROP_PX) for cy in range(GRID[1]) for cx in range(GRID[0])]
    t = pd.DataFrame([{"x0": x, "y0": y, "x1": x + CROP_PX, "y1": y + CROP_PX} for x, y in boxes])
    sl._attention_heatmap(str(slide), t, a, "a bag", tmp_path / "a.png", "abmil")
    assert (tmp_path / "a.png").stat().st_size > 5000
    return figs[0]


def test_attention_heatmap_shows_uniform_attention_as_uniform(amibr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trial19: attention scaled to the bag's maximum painted a near-uniform ABMIL (weights 1/12 +- 3%) all in the top
    colour. Now: attention x n tiles on a fixed log scale, so uniform is the middle colour and a peak stands out."""
    from mito.app.demo import build_toy_slides

    slide = build_toy_slides(tmp_path / "toy", amibr_dir, n_slides=1)["slides"] / "toy_00_normal.svs"
    near = np.full(12, 1 / 12) * np.linspace(0.97, 1.03, 12)
    fig = _attention_figure(slide, near / near.sum(), tmp_path, monkeypatch)
    im = fig.axes[0].images[1]
    shade = np.asarray(im.norm(im.get_array().compressed()))
    assert 0.48 < shade.min() and shade.max() < 0.52, (shade.min(), shade.max())  # the middle of the scale, everywhere
    assert "x 12 tiles (1 = uniform)" in fig.axes[1].get_ylabel()
    peak = np.full(12, 0.6 / 10)
    peak[3], peak[7] = 0.3, 0.1
    im = _attention_figure(slide, peak, tmp_path, monkeypatch).axes[0].images[1]
    shade = np.asarray(im.norm(im.get_array().compressed()))
    assert shade.max() > 0.8 and np.median(shade) < 0.5  # the 3.6x-uniform tile near the top, the rest below uniform


def test_proxy_scatter_labels_neither_overlap_nor_leave_their_panel() -> None:
    from mito.report.mpl import pyplot
    from mito.report.proxy import label_points

    plt = pyplot()
    # the full-AMi-Br layout that used to print efficientnet_lite1@128 over efficientnet_lite1 (dataset panel)
    pts = [
        ("efficientnet_lite0", 0.907, 0.690),
        ("efficientnet_lite0@128", 0.857, 0.664),
        ("efficientnet_lite1", 0.920, 0.655),
        ("efficientnet_lite1@128", 0.848, 0.656),
        ("efficientnet_lite2", 0.951, 0.637),
        ("efficientnet_lite2@128", 0.885, 0.679),
        ("random_efficientnet_lite0", 0.707, 0.606),
    ]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([p[1] for p in pts], [p[2] for p in pts], "o")
    ax.margins(0.25)
    fig.tight_layout()
    label_points(ax, pts)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(ax.texts) == len(pts)
    assert not _overlaps(ax.texts, renderer)
    frame = ax.get_window_extent(renderer)
    for t in ax.texts:
        e = t.get_window_extent(renderer)
        assert frame.x0 <= e.x0 and e.x1 <= frame.x1, t.get_text()
    plt.close(fig)

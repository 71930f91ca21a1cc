"""The only package that draws or renders: report.html and its PNGs, UMAPs, slide pictures (QC, heatmaps, attention)
and the terminal's rich tables."""

from mito.report.fewshot import curve_rich_table, learning_curve_figure
from mito.report.html import build_report
from mito.report.leaderboard import comparison_text, leaderboard_table, paired_cells
from mito.report.proxy import proxy_rich_table, proxy_section
from mito.report.slides import check_heatmap_dir, check_heatmap_store, draw_pictures, qc_store, write_heatmaps
from mito.report.tables import Col, FitTable
from mito.report.umap import leaderboard_umaps, umap_plot, umap_plots

__all__ = [
    "Col",
    "FitTable",
    "build_report",
    "check_heatmap_dir",
    "check_heatmap_store",
    "comparison_text",
    "curve_rich_table",
    "draw_pictures",
    "learning_curve_figure",
    "leaderboard_table",
    "leaderboard_umaps",
    "paired_cells",
    "proxy_rich_table",
    "proxy_section",
    "qc_store",
    "umap_plot",
    "umap_plots",
    "write_heatmaps",
]

"""A results folder's report: the figures of stages/figures.py drawn from what the run saved there,
nothing recomputed. `oneencoder pipeline` writes it at the end of every run and `oneencoder evaluate
--output` beside its results; `oneencoder report FOLDER` draws it again.

What it reads in FOLDER, each when present:
- `results[-<name>].json` of a plain evaluation: the R@k chart, and the router weights of a mixture of
  experts; with its `-embeddings.safetensors` (stages/report_data.py), the joint space, the similarity
  matrix and the zero-shot confusion matrices;
- `results-<name>.json` of an evaluation `by` a field (per style): that field's chart;
- `forgetting[-<name>].json`: the forgetting plot;
- FOLDER itself and every stage folder in it: the TensorBoard logs' training curves
  (`lightning_logs/version_*`), and a codebook stage's usage (its `ema_count` in model.safetensors).

What it writes: `figures/<figure>.png`, `figures/figures.json` (every figure's caption and plotted
values, for checking a figure against the numbers), `report.html` (self-contained: the tables and
the figures inline, opens from disk), and a Figures section at the end of results.md.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from oneencoder.files import atomic_write_text, atomic_write_with
from oneencoder.model import CONFIG_NAME, WEIGHTS_NAME

from . import figures
from .figures import Plot
from .markdown import FIGURES_MARK, without_figures
from .pipeline import STALE
from .report_data import ReportData, embeddings_path

if TYPE_CHECKING:
    from torch import Tensor

FIGURES = "figures"
HTML = "report.html"
DPI = 100  # 8-inch figures: 800 px, a README's width
STYLE = ("body{font-family:sans-serif;max-width:900px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
         "img{max-width:100%}figure{margin:2em 0}figcaption{font-size:0.9em;color:#444}")
LOGS = "lightning_logs"


def write_report(folder: str | os.PathLike[str], seed: int = 0) -> Path | None:
    """Draw every figure FOLDER's saved results allow, then figures.json, report.html and results.md's
    Figures section; returns the report.html path, or None when there is nothing to draw."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such results folder; give the --output of `oneencoder evaluate` or"
                                " a pipeline's `output`")
    plots = list(collect_plots(folder, seed))
    if not plots:
        return None
    out = folder / FIGURES
    out.mkdir(exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    images = {}
    for plot in plots:
        path = out / f"{plot.name}.png"
        atomic_write_with(path, lambda tmp, p=plot: p.figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))
        images[plot.name] = path.read_bytes()
    atomic_write_text(out / "figures.json", json.dumps({p.name: {"caption": p.caption, "data": p.data} for p in plots}))
    report = folder / HTML
    atomic_write_text(report, report_html(folder, plots, images))
    add_figures_section(folder / "results.md", plots)
    return report


def collect_plots(folder: Path, seed: int) -> Iterator[Plot]:
    """The figures in report order: evaluations, forgetting, then training per stage."""
    for path in sorted(folder.glob("results*.json")):
        results = json.loads(path.read_text())
        suffix = path.stem.removeprefix("results")  # "" or "-<name>"
        if "by" in results:
            yield from _named(suffix, [figures.style_chart(results)])
            continue
        if "metrics" not in results:
            continue
        plots: list[Plot | None] = [figures.recall_chart(results)]
        if results.get("routing"):
            plots.append(figures.router_weights(results["routing"]))
        embeddings = embeddings_path(folder, path.stem)
        if embeddings.exists():
            data = ReportData.load(embeddings)
            plots += [figures.joint_space(data, seed), figures.similarity_matrix(data, seed), figures.confusion_matrices(data)]
        yield from _named(suffix, plots)
    for path in sorted(folder.glob("forgetting*.json")):
        suffix = path.stem.removeprefix("forgetting")  # its evaluation's: forgetting-<name>.json, results-<name>.json
        results = folder / f"results{suffix}.json"
        chance = json.loads(results.read_text()).get("chance", {}) if results.exists() else {}
        yield from _named(suffix, [figures.forgetting_plot(json.loads(path.read_text()), chance)])
    for stage in stage_folders(folder):
        name = stage.name if stage != folder else "stage"
        counts = codebook_counts(stage)
        yield from _named("", [figures.training_curves(name, logged_scalars(stage / LOGS)),
                               None if counts is None else figures.codebook_usage(name, counts)])


def _named(suffix: str, plots: list[Plot | None]) -> Iterator[Plot]:
    """The figures drawn (None: nothing to draw); a named evaluation's carry its name: recall-styles.png
    beside recall.png."""
    for plot in plots:
        if plot is not None:
            plot.name += suffix
            yield plot


def stage_folders(folder: Path) -> list[Path]:
    """FOLDER itself when it is a stage's, and its sub-folders that are stages' (with training logs or a
    model; not those a pipeline set aside as stale), in the order they were trained (their config.yaml's
    time)."""
    def is_stage(path: Path) -> bool:
        return (path / LOGS).is_dir() or (path / WEIGHTS_NAME).is_file()

    stages = [path for path in sorted(folder.iterdir())
              if path.is_dir() and path.name != FIGURES and STALE not in path.name and is_stage(path)]
    stages.sort(key=lambda path: (path / "config.yaml").stat().st_mtime if (path / "config.yaml").exists() else 0)
    return ([folder] if is_stage(folder) else []) + stages


def logged_scalars(logs: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every TensorBoard run under `logs` (version_0, version_1 after a resume, ...), by
    step; a later run's value for a step replaces an earlier one's (a resumed run logs it again)."""
    if not logs.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    versions = sorted(logs.glob("version_*"), key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)
    for version in versions:
        accumulator = EventAccumulator(str(version), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            for event in accumulator.Scalars(tag):
                merged.setdefault(tag, {})[event.step] = event.value
    return {tag: sorted(points.items()) for tag, points in merged.items()}


def codebook_counts(stage: Path) -> Tensor | None:
    """A codebook stage's per-code EMA usage (`...ema_count` in its model.safetensors); None for a
    folder that holds no exported codebook model."""
    from safetensors import SafetensorError, safe_open

    from oneencoder.codebook_model import FORMAT

    config = stage / CONFIG_NAME
    if not config.is_file() or json.loads(config.read_text()).get("format") != FORMAT:
        return None
    try:
        with safe_open(str(stage / WEIGHTS_NAME), framework="pt") as file:
            key = next(key for key in file.keys() if key.endswith("ema_count"))  # noqa: SIM118 (not a mapping)
            return file.get_tensor(key)
    except (OSError, SafetensorError, StopIteration) as error:
        raise ValueError(f"{stage / WEIGHTS_NAME}: a codebook stage's weights without a readable `ema_count`"
                         f" ({error!r}); export the codebook stage again") from None


def add_figures_section(results_md: Path, plots: list[Plot]) -> None:
    """results.md's Figures section, replacing the one an earlier report wrote."""
    if not results_md.exists():
        return
    lines = [without_figures(results_md.read_text()).rstrip("\n"), "", FIGURES_MARK, "", "## Figures", "",
             f"All of them, with the tables, in [{HTML}]({HTML}).", ""]
    for plot in plots:
        caption = plot.caption[:1].upper() + plot.caption[1:]
        lines += [f"![{caption}]({FIGURES}/{plot.name}.png)", "", f"*{caption}.*", ""]
    atomic_write_text(results_md, "\n".join(lines))


def report_html(folder: Path, plots: list[Plot], images: dict[str, bytes]) -> str:
    """One page: every results and forgetting table of the folder, then every figure inline."""
    import markdown

    tables = []
    for path in sorted(folder.glob("results*.md")) + sorted(folder.glob("forgetting*.md")):
        text = without_figures(path.read_text())
        tables.append(f"<section><h2>{html.escape(path.name)}</h2>{markdown.markdown(text, extensions=['tables'])}</section>")
    shown = []
    for plot in plots:
        data = base64.b64encode(images[plot.name]).decode()
        shown.append(f'<figure id="{html.escape(plot.name)}"><img alt="{html.escape(plot.caption)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{html.escape(plot.caption)}</figcaption></figure>')
    title = f"oneencoder report: {html.escape(str(folder))}"
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>", f"<h1>{title}</h1>", "<h2>Figures</h2>", *shown, *tables, "</body></html>", "",
    ])

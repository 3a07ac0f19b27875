"""`oneencoder compare`: one results page putting pipelines side by side, read from what their runs
wrote (nothing is recomputed, so the page costs seconds and shows exactly the figures each run
reported): retrieval, zero-shot accuracy, the forgetting table, what each stage trained and what it
cost, and a mixture of experts' router weights. Reading JSON only, it imports neither torch nor Lightning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from oneencoder.files import atomic_write_text

from .forgetting import METRICS, forgetting_markdown
from .markdown import routing_table, table
from .pipeline import STAGE_STATE, EvaluationSpec, PipelineSpec, read_json

NOT_MEASURED = "—"  # the run did not evaluate this (a pair or metric it lacks)
NOT_RECORDED = "n/a"  # a stage.json written before the runner recorded this field


@dataclass
class StageCost:
    """What one stage trained and cost, from its stage.json (None: not recorded there)."""

    name: str
    pairs: list[list[str]] | None
    trainable_parameters: int | None
    seconds: float | None


@dataclass
class PipelineResults:
    """One pipeline's written results: the final evaluation, the forgetting table (None when the run
    did not evaluate every stage) and its stages, the start_from model's first when it has one."""

    label: str
    config: Path
    results: dict[str, Any]
    forgetting: dict[str, Any] | None
    stages: list[StageCost]


def load_results(config: str | os.PathLike[str], label: str, evaluation: str | None = None) -> PipelineResults:
    """Read what `oneencoder pipeline <config>` wrote for its evaluation named `evaluation` (default:
    its first); results that are not there are an error naming the file and the command that writes them."""
    spec = PipelineSpec.load(config)
    chosen = _evaluation(spec, config, evaluation)
    output = Path(spec.output)
    suffix = f"-{chosen.name}" if chosen.name else ""
    results_path = output / f"results{suffix}.json"
    results = read_json(results_path)
    if results is None:
        raise ValueError(f"{results_path} not found: pipeline {config} has not been evaluated yet; run"
                         f" `oneencoder pipeline {config}` first")
    start = _stage_cost(f"start_from ({spec.start_from})", Path(spec.start_from)) if spec.start_from else None
    stages = [start] if start else []
    stages += [_stage_cost(stage.name, output / stage.name) or StageCost(stage.name, None, None, None)
               for stage in spec.stages]
    return PipelineResults(label, Path(config), results, read_json(output / f"forgetting{suffix}.json"), stages)


def _evaluation(spec: PipelineSpec, config: str | os.PathLike[str], name: str | None) -> EvaluationSpec:
    if not spec.evaluation:
        raise ValueError(f"{config} has no `evaluation`; add one (see configs/pipeline/demo.yaml) and run"
                         f" `oneencoder pipeline {config}`")
    if name is None:
        return spec.evaluation[0]
    for evaluation in spec.evaluation:
        if evaluation.name == name:
            return evaluation
    raise ValueError(f"{config} has no evaluation named {name!r}; its evaluations: {[e.name for e in spec.evaluation]}")


def _stage_cost(name: str, folder: Path) -> StageCost | None:
    """The stage's cost from `folder`/stage.json; None when there is none."""
    state = read_json(folder / STAGE_STATE)
    if state is None:
        return None
    return StageCost(name, state.get("pairs"), state.get("trainable_parameters"), state.get("seconds"))


def compare(configs: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None,
            evaluation: str | None = None) -> str:
    """The page for pipeline configs, labelled by `labels` (default: each config's file stem)."""
    if not configs:
        raise ValueError("name at least one pipeline config to compare")
    labels = list(labels) if labels else [Path(config).stem for config in configs]
    if len(labels) != len(configs):
        raise ValueError(f"--labels gives {len(labels)} labels for {len(configs)} pipeline configs; give one each")
    if len(set(labels)) != len(labels):
        raise ValueError(f"the pipelines' labels {labels} repeat; give distinct ones with --labels")
    return compare_page([load_results(config, label, evaluation) for config, label in zip(configs, labels)])


def compare_page(pipelines: Sequence[PipelineResults]) -> str:
    """Markdown: retrieval, zero-shot accuracy, forgetting, stage costs and router weights."""
    names = ", ".join(f"{p.label} (`{p.config}`)" for p in pipelines)
    sections = [[f"# Pipelines side by side: {names}"], _data_note(pipelines), _retrieval(pipelines),
                _zero_shot(pipelines), _forgetting(pipelines), _costs(pipelines), _routing(pipelines)]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def _data_note(pipelines: Sequence[PipelineResults]) -> list[str]:
    described = [_data(p.results) for p in pipelines]
    if len(set(described)) == 1:
        return [f"All evaluated on {described[0]}."]
    where = "; ".join(f"{p.label}: {data}" for p, data in zip(pipelines, described))
    return [f"**The pipelines were evaluated on different data** ({where}): their figures do not compare."]


def _data(results: dict[str, Any]) -> str:
    """The records an evaluation ranked: manifest, split and record filter (`where`)."""
    kept = ", ".join(f"{key}={value}" for key, value in sorted((results.get("where") or {}).items()))
    return f"`{results.get('manifest')}`, split `{results.get('split')}`" + (f", records with {kept}" if kept else "")


def _retrieval(pipelines: Sequence[PipelineResults]) -> list[str]:
    directions = _ordered(key.rsplit("/", 1)[0] for p in pipelines for key in p.results.get("metrics", {}))
    columns = ["query -> gallery"]
    for metric in METRICS:
        columns += [*(f"{p.label} {metric}" for p in pipelines), f"chance {metric}"]
    rows = []
    for direction in directions:
        cells = [direction]
        for metric in METRICS:
            key = f"{direction}/{metric}"
            cells += [_retrieval_cell(p.results, direction, metric) for p in pipelines]
            chance = next((p.results["chance"][key] for p in pipelines if key in p.results.get("chance", {})), None)
            cells.append(NOT_MEASURED if chance is None else f"{chance:.3f}")
        rows.append(cells)
    return ["## Retrieval", "",
            f"Final models. * : the two modalities were never trained together (transitive); {NOT_MEASURED}: not"
            " evaluated.", "", *table(columns, rows)]


def _retrieval_cell(results: dict[str, Any], direction: str, metric: str) -> str:
    value = results.get("metrics", {}).get(f"{direction}/{metric}")
    if value is None:
        return NOT_MEASURED
    trained = results.get("trained_pairs")
    transitive = trained is not None and sorted(direction.split("->")) not in [sorted(pair) for pair in trained]
    return f"{value:.3f}{'*' if transitive else ''}"


def _zero_shot(pipelines: Sequence[PipelineResults]) -> list[str]:
    sections = [p.results.get("zero_shot") or {} for p in pipelines]
    keys = _ordered(key for section in sections for key in section.get("metrics", {}))
    if not keys:
        return ["## Zero-shot classification", "", "No pipeline's evaluation had labelled records."]
    modalities = _ordered(key.split("/", 1)[0] for key in keys)
    measures = _ordered(key.rsplit("/", 1)[1] for key in keys)
    columns = ["modality"]
    for measure in measures:
        columns += [*(f"{p.label} {measure}" for p in pipelines), f"chance {measure}"]
    rows = []
    for modality in modalities:
        cells = [modality]
        for measure in measures:
            key = f"{modality}/zero-shot/{measure}"
            cells += [_number(section.get("metrics", {}).get(key)) for section in sections]
            cells.append(_number(next((s["chance"][key] for s in sections if key in s.get("chance", {})), None)))
        rows.append(cells)
    return ["## Zero-shot classification", "", *table(columns, rows)]


def _forgetting(pipelines: Sequence[PipelineResults]) -> list[str]:
    lines = ["## Forgetting"]
    for pipeline in pipelines:
        if pipeline.forgetting is None:
            lines += ["", f"### {pipeline.label}", "",
                      f"Not measured: set `evaluate_each_stage: true` in {pipeline.config} and run"
                      f" `oneencoder pipeline {pipeline.config}`."]
        else:
            lines += ["", forgetting_markdown(pipeline.forgetting, f"### {pipeline.label}").rstrip("\n")]
    return lines


def _costs(pipelines: Sequence[PipelineResults]) -> list[str]:
    rows = []
    for pipeline in pipelines:
        for stage in pipeline.stages:
            pairs = NOT_RECORDED if stage.pairs is None else ", ".join("-".join(pair) for pair in stage.pairs)
            parameters = NOT_RECORDED if stage.trainable_parameters is None else f"{stage.trainable_parameters:,}"
            rows.append([pipeline.label, stage.name, pairs, parameters, _seconds(stage.seconds)])
        times = [stage.seconds for stage in pipeline.stages]
        rows.append([pipeline.label, "**total**", "", "", _seconds(None if None in times else sum(times))])
    return ["## Stages: what each trained and cost", "",
            f"Wall time of each stage's last fit run; {NOT_RECORDED}: its stage.json predates the field.", "",
            *table(["pipeline", "stage", "pairs trained", "trainable parameters", "wall time"], rows)]


def _seconds(seconds: float | None) -> str:
    return NOT_RECORDED if seconds is None else f"{seconds:.0f} s"


def _routing(pipelines: Sequence[PipelineResults]) -> list[str]:
    lines = []
    for pipeline in pipelines:
        if pipeline.results.get("routing"):
            lines += ["", f"### {pipeline.label}", "", *routing_table(pipeline.results["routing"])]
    if not lines:
        return []
    return ["## Router weights", "", "Each modality's mean router weight per expert over the test items.", *lines]


def _number(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.3f}"


def _ordered(items: Any) -> list[str]:
    """Distinct items in order of first appearance."""
    return list(dict.fromkeys(items))


def write_page(page: str, output: str | os.PathLike[str]) -> None:
    """The page to `output` (a markdown file), its folder made when missing."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name for the page, e.g. {path / 'compare.md'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)

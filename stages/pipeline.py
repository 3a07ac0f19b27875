"""The stage runner: `oneencoder pipeline configs/pipeline/<name>.yaml` trains an ordered list of
stages, each from the previous one's output folder, then evaluates every pair of modalities.

A pipeline YAML has `output`, `stages` (each `{name, config}`), `evaluation` (one mapping or a named
list), and optionally `start_from` (an exported model folder, e.g. another pipeline's stage, that the
first stage starts from) and `evaluate_each_stage` (default false). A stage's `config` is one YAML
file or a list of them, merged in order as `oneencoder fit --config a --config b` merges them
(merge_stage_configs: a shared base and small per-stage overrides).

A stage's folder `<output>/<name>/` holds the config it ran with (`config.yaml`: the merged files,
every output path pointed into the folder and `previous` filled in), `stage.json` (its hash and
status; once done, also `seconds`, the wall time of its last fit, `trainable_parameters` from its
export's metrics.json, and `pairs`, the pairs of modalities it trained), the Lightning checkpoints and
the exported model. The hash covers the resolved config, the manifests' content and media of every
data source (`sources` of a BalancedDataModule, or the data module's `manifest`), and what the stage
starts from (the previous stage's hash, or start_from's weights digest), so a finished stage with the
same hash is skipped, an interrupted one resumes from `checkpoints/last.ckpt`, and a stage whose
config or inputs changed is run again (its old folder is kept beside it as `<name>.stale-<hash>`).
`stage.json` also records the digest of the exported model (model.safetensors + config.json) and of
the model it started from: a finished stage whose model went missing or changed, or whose previous
model changed, is run again too, and evaluation results are keyed by the digest of the weights they
were computed from.

Each evaluation writes `<output>/results[-<name>].json|.md` for the final model. With
`evaluate_each_stage` it also runs on every stage's model (and start_from's, as stage `start`) into
`<output>/<stage>/results[-<name>].json|.md`, with the same caching by digest, and the forgetting table
(stages/forgetting.py) goes to `<output>/forgetting[-<name>].json|.md`; an evaluation `by` a record field
(per style) runs on the final model only: the forgetting table compares the plain evaluations' pairs.
Last, unless `report: false`, the report (stages/report.py): every figure those results and the stages'
training logs allow, in `<output>/figures/`, `<output>/report.html` and results.md.

Each stage runs in its own process, so a multi-GPU stage launches DDP exactly as `oneencoder fit`
does; a stage with a feature cache (any of its sources) has it built (or checked) first by
`oneencoder cache`, in one process. That process dies with the runner (stages/processes.py), and the
runner holds `<output>/<name>.lock` while it works on a stage, so two runners never train one stage at
once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from datamodules.manifest import MEDIA_FIELDS, BadRecordError, ManifestError, manifest_paths, read_manifests
from datamodules.signatures import SignatureMemo
from oneencoder.files import atomic_write_text, atomic_write_with, exclusive_lock
from oneencoder.precision import EncodingPrecision

from .cli import build_stage_cache, is_user_mistake
from .config_merge import merge_stage_configs
from .markdown import without_figures
from .processes import run_child
from .timing import PhaseClock, duration

log = logging.getLogger(__name__)

STAGE_STATE = "stage.json"
MODEL_FILES = ("model.safetensors", "config.json")  # what ExportPretrained writes; results depend on them
MEDIA_MEMO = ".media-signatures.json"
CHECKPOINTS = "checkpoints"
START = "start"  # start_from's model, among the stages whose results are compared
STALE = ".stale-"  # a stage folder set aside when its stage runs again: `<name>.stale-<hash>`


class PipelineError(RuntimeError):
    """A pipeline config that cannot run, or a stage that failed."""


@dataclass
class StageSpec:
    """One stage: a name (its folder under `output`) and its config for `oneencoder fit`: one YAML file,
    or a list of them merged in order as `oneencoder fit --config a.yaml --config b.yaml` merges them
    (see merge_stage_configs)."""

    name: str
    config: str | list[str]

    @property
    def config_files(self) -> list[str]:
        return [self.config] if isinstance(self.config, str) else list(self.config)


@dataclass
class EvaluationSpec:
    """An evaluation of the final model on one manifest split: retrieval between every pair of its
    `modalities` (default: all the model's), and zero-shot classification of labelled records
    (`templates`: prompts with `{}` where the class name goes; `classes`: default the split's labels).
    `where`: only the records whose fields equal all these values (`{style: openmoji}`). `precision`:
    what embedding runs in (32-true; auto: bf16-mixed where this machine runs bf16 fast). `by`: a record
    field (`style`): text<->image per value of it and image->image across values instead
    (stages/style_eval.py), on the final model only; it takes no `modalities`, `templates` or `classes`.
    Its results go to `results-<name>.json` / `.md`, or `results.json` / `.md` when it has no name (one
    evaluation of a pipeline may have none)."""

    manifest: str
    name: str | None = None
    split: str = "test"
    modalities: list[str] | None = None
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 64
    num_workers: int = 0
    video_backend: str = "decord"
    templates: list[str] = field(default_factory=lambda: ["{}"])
    classes: list[str] | None = None
    where: dict[str, str] | None = None
    by: str | None = None
    precision: str = "32-true"


NOT_BY = ("modalities", "templates", "classes")  # what an evaluation `by` a field does not take


@dataclass
class PipelineSpec:
    """`start_from`: an exported model folder (another pipeline's stage) the first stage starts from.
    `evaluate_each_stage`: every evaluation also runs on each stage's model (and start_from's), and
    the forgetting table compares them (stages/forgetting.py). `report`: draw the report at the end
    (stages/report.py; false: the tables only)."""

    output: str
    stages: list[StageSpec]
    evaluation: list[EvaluationSpec] = field(default_factory=list)
    start_from: str | None = None
    evaluate_each_stage: bool = False
    report: bool = True

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PipelineSpec:
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"pipeline config {path} not found (see configs/pipeline/ for examples)")
        data = _read_yaml(path) or {}
        spec = _build(cls, data, str(path))
        spec.stages = [_build(StageSpec, s, f"{path}: stages[{i}]") for i, s in enumerate(data.get("stages") or [])]
        evaluations = data.get("evaluation") or []
        if isinstance(evaluations, dict):  # one evaluation may be written without the list
            evaluations = [evaluations]
        spec.evaluation = [_build(EvaluationSpec, e, f"{path}: evaluation[{i}]") for i, e in enumerate(evaluations)]
        for i, evaluation in enumerate(spec.evaluation):
            _check_evaluation(evaluation, f"{path}: evaluation[{i}]")
        names = [e.name for e in spec.evaluation]
        if len(set(names)) != len(names):  # one may have none: the main one, written to results.md
            raise PipelineError(f"{path}: several evaluations need a unique `name` each, but for one that may have"
                                f" none (got {names})")
        if not spec.stages:
            raise PipelineError(f"{path}: `stages` is empty; list at least one {{name, config}}")
        names = [s.name for s in spec.stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"{path}: stage names must be unique (got {names})")
        for flag in ("evaluate_each_stage", "report"):
            if not isinstance(getattr(spec, flag), bool):
                raise PipelineError(f"{path}: `{flag}` is true or false (got {getattr(spec, flag)!r})")
        if spec.start_from is not None and START in names:
            raise PipelineError(f"{path}: the stage name {START!r} is the start_from model's in the results; rename"
                                " that stage")
        return spec


def _read_yaml(path: Path, where: str = "") -> Any:
    """The file's YAML; a syntax error is one line naming the file, line and column (yaml's own spans several)."""
    try:
        with path.open() as stream:
            return yaml.safe_load(stream)
    except yaml.MarkedYAMLError as error:
        mark, context = error.problem_mark, error.context_mark
        started = f" ({error.context} from line {context.line + 1})" if error.context and context else ""
        raise PipelineError(
            f"{where}{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {error.problem}{started}"
        ) from None
    except yaml.YAMLError as error:  # a character YAML refuses: yaml names the file and a position, not a line
        raise PipelineError(f"{where}{path}: not valid YAML: {' '.join(str(error).split())}") from None


def _check_evaluation(spec: EvaluationSpec, where: str) -> None:
    if spec.where is not None and not (isinstance(spec.where, dict) and all(
            isinstance(key, str) and isinstance(value, str) for key, value in spec.where.items())):
        raise PipelineError(f"{where}: `where` maps record fields to the values to keep, e.g. {{style: openmoji}}"
                            f" (got {spec.where!r})")
    if spec.precision not in get_args(EncodingPrecision):
        raise PipelineError(f"{where}: `precision` is one of {list(get_args(EncodingPrecision))} (got {spec.precision!r})")
    if spec.by is None:
        return
    if not isinstance(spec.by, str):
        raise PipelineError(f"{where}: `by` is a record field to evaluate per value of, e.g. style (got {spec.by!r})")
    default = EvaluationSpec(spec.manifest)
    unused = [key for key in NOT_BY if getattr(spec, key) != getattr(default, key)]
    if unused:
        raise PipelineError(f"{where}: an evaluation `by` {spec.by!r} ranks images and captions per {spec.by} and"
                            f" images across them: it takes no {unused}; put those in another evaluation")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: expected a mapping with keys {[f.name for f in dataclasses.fields(cls)]}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PipelineError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    try:
        return cls(**data)
    except TypeError as error:
        raise PipelineError(f"{where}: {error}") from None


# --- a stage's config: one file, or several merged -----------------------------------------------------


def read_stage_config(spec: StageSpec) -> dict[str, Any]:
    """The stage's config file, or its files merged in order (merge_stage_configs)."""
    files = spec.config_files
    if not files or not all(isinstance(f, str) for f in files):
        raise PipelineError(f"stage {spec.name!r}: `config` must be a YAML file or a list of them (got {spec.config!r})")
    configs = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise PipelineError(f"stage {spec.name!r}: config {path} not found")
        config = _read_yaml(path, f"stage {spec.name!r}: ")
        if not isinstance(config, dict):
            raise PipelineError(f"stage {spec.name!r}: {path} is not a mapping; a stage config has `model`, `data`,"
                                " `trainer`")
        configs.append(config)
    return merge_stage_configs(configs) if len(configs) > 1 else configs[0]


# --- one stage ----------------------------------------------------------------------------------------


def resolve_stage_config(spec: StageSpec, folder: Path, previous: Path | None) -> dict[str, Any]:
    """The stage's config with every output in `folder` and `previous` set to the last stage's folder."""
    config = read_stage_config(spec)
    path = " + ".join(spec.config_files)
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and "save_dir" in logger.get("init_args", {}):
            logger["init_args"]["save_dir"] = str(folder)
    has_last = False
    for callback in trainer.get("callbacks") or []:
        kind = callback.get("class_path", "").rsplit(".", 1)[-1]
        init_args = callback.setdefault("init_args", {})
        if kind in ("ModelCheckpoint", "StageCheckpoint"):
            init_args["dirpath"] = str(folder / CHECKPOINTS)
            has_last = has_last or (kind == "StageCheckpoint" and bool(init_args.get("save_last")))
        elif kind == "ExportPretrained":
            init_args["dirpath"] = str(folder)
    if not has_last:
        raise PipelineError(
            f"stage {spec.name!r}: {path} needs a stages.checkpoint.StageCheckpoint callback with `save_last:"
            " true`, which the runner resumes an interrupted stage from (Lightning's own ModelCheckpoint keeps"
            " the best epoch in last.ckpt, not the latest)"
        )
    model = config.get("model") or {}
    if "previous" in inspect.signature(_import(model.get("class_path", ""), spec)).parameters:
        if previous is None:
            raise PipelineError(f"stage {spec.name!r} starts from an earlier stage's output: put a stage before it,"
                                " or name a model folder in the pipeline's `start_from`")
        model.setdefault("init_args", {})["previous"] = str(previous)
    return config


def _import(class_path: str, spec: StageSpec) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise PipelineError(f"stage {spec.name!r}: model class_path {class_path!r} cannot be imported") from None


def stage_hash(config: dict[str, Any], previous_hash: str | None) -> str:
    """Config + manifest content + the stage's media files + what it starts from: what decides whether
    a stage must run again. The media count because a skipped stage never looks at its data: a changed
    file must rerun the stage, whose feature cache then encodes that file again. A data module with
    `sources` counts every source's manifests and media files (of that source's modalities)."""
    stage_folder = (config.get("trainer") or {}).get("default_root_dir")
    memo = _signature_memo(Path(stage_folder).parent if stage_folder else None)
    manifests, media = [], []
    for source_manifests, modalities in data_sources(config):
        paths = manifest_paths(source_manifests)
        manifests.append([_file_digest(Path(m)) if Path(m).is_file() else None for m in paths])
        media.append(_media_digest(paths, modalities, memo))
    if "sources" not in _data_args(config):  # one source, hashed as before sources existed: no stage reruns
        manifests, media = manifests[0], media[0]
    payload = json.dumps({"config": config, "manifest": manifests, "media": media, "previous": previous_hash},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def data_sources(config: dict[str, Any]) -> list[tuple[str | list[str], list[str]]]:
    """(manifests, modalities) of each source the stage's data module reads: its `sources`
    (BalancedDataModule), or its own `manifest` and `modalities`."""
    args = _data_args(config)
    if "sources" in args:
        return [((source or {}).get("manifest") or [], list((source or {}).get("modalities") or []))
                for source in args["sources"] or []]
    return [(args.get("manifest") or [], _modalities(config))]


def feature_cache_roots(config: dict[str, Any]) -> list[str]:
    """The folders the stage's feature caches go to (each holding `<modality>/`): its data module's
    `feature_cache` (one folder, or one per modality) and its sources' (BalancedDataModule)."""
    args = _data_args(config)
    roots = []
    for setting in [args.get("feature_cache"), *((source or {}).get("feature_cache") for source in args.get("sources") or [])]:
        if isinstance(setting, dict):
            roots += [str(folder) for folder in setting.values()]
        elif setting:
            roots.append(str(setting))
    return list(dict.fromkeys(roots))


def _signature_memo(output: Path | None) -> SignatureMemo:
    """Media signatures of earlier runs, in the pipeline's output folder (in memory until it exists)."""
    return SignatureMemo(output / MEDIA_MEMO if output is not None and output.is_dir() else None)


def _modalities(config: dict[str, Any]) -> list[str]:
    """The stage's data modalities: its config's, or its data module's default."""
    data = config.get("data") or {}
    if "modalities" in _data_args(config):
        return list(_data_args(config)["modalities"])
    module, _, name = data.get("class_path", "").rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), name)).parameters.get("modalities")
    except (ImportError, AttributeError, ValueError):
        return []  # the stage itself will name the bad class path
    return list(parameter.default) if parameter is not None and parameter.default is not inspect.Parameter.empty else []


def _media_digest(manifests: list[str | Path], modalities: list[str], memo: SignatureMemo,
                  split: str | None = None) -> str | None:
    """One digest over the signatures (path + content, see datamodules/signatures.py) of every media
    file of `modalities` the manifests name; None where a manifest cannot be read (the stage then
    fails with the reason). A missing file counts as such, so its coming back reruns the stage too; a
    field that is not a path is left out (the stage names or skips that record). With `split`, only
    that split's records count (an evaluation reads no other)."""
    try:
        records = read_manifests(manifests) if all(Path(m).is_file() for m in manifests) else []
    except ManifestError:
        return None
    paths = []
    for record in records:
        if split is not None and record.split != split:
            continue
        for modality in modalities:
            if modality in MEDIA_FIELDS and modality in record.fields:
                try:
                    paths.append(record.path(modality))
                except BadRecordError:
                    continue
    present = [path for path in paths if path.is_file()]
    signatures = dict(zip(present, memo.signatures(present)))
    memo.save()
    digest = hashlib.sha256()
    for path in paths:
        digest.update(signatures.get(path, f"{path}|missing").encode() + b"\n")
    return digest.hexdigest()


def _data_args(config: dict[str, Any]) -> dict[str, Any]:
    return (config.get("data") or {}).get("init_args") or {}


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def trained_pairs(config: dict[str, Any]) -> set[frozenset[str]]:
    """The pairs of modalities a stage trained together, read from its model arguments: `pairs`
    (ProgressiveStage), `modality` + `anchor` (AlignStage), `modalities` (CodebookStage: every pair
    shares the codebook) or `pair` (UPStage)."""
    args = (config.get("model") or {}).get("init_args") or {}
    if "modalities" in args:
        return {frozenset(pair) for pair in itertools.combinations(args["modalities"] or [], 2)}
    if "pairs" in args:
        return {frozenset(pair) for pair in args["pairs"] or []}
    if "modality" in args:
        return {frozenset((args["modality"], args.get("anchor", "text")))}
    return {frozenset(args.get("pair", ("image", "text")))}


def sorted_pairs(pairs: set[frozenset[str]]) -> list[list[str]]:
    return sorted(sorted(pair) for pair in pairs)


@dataclass
class StageRun:
    spec: StageSpec
    folder: Path
    config: dict[str, Any]
    hash: str

    @property
    def state_path(self) -> Path:
        return self.folder / STAGE_STATE

    @property
    def lock_path(self) -> Path:
        # Beside the folder, not in it: setting the folder aside must not move the lock.
        return self.folder.with_name(f"{self.folder.name}.lock")

    def state(self) -> dict[str, Any] | None:
        return read_json(self.state_path)

    def write_state(self, status: str, previous_weights: str | None, weights: str | None = None,
                    seconds: float | None = None) -> None:
        """stage.json; a finished stage adds the wall time of its last fit (a resumed one: of the part
        after the resume) and the trainable parameter count its export recorded."""
        payload = {"name": self.spec.name, "hash": self.hash, "status": status, "source_config": self.spec.config,
                   "previous_weights": previous_weights, "weights": weights,
                   "pairs": sorted_pairs(trained_pairs(self.config))}
        if status == "done":
            metrics = read_json(self.folder / "metrics.json") or {}
            payload |= {"seconds": seconds, "trainable_parameters": metrics.get("trainable_parameters")}
        atomic_write_text(self.state_path, json.dumps(payload, indent=2))

    def run(self, previous_weights: str | None, clock: PhaseClock) -> str:
        """Skip when done with this hash on the same previous model and its own model is intact;
        otherwise fit, resuming from last.ckpt when there is one. `previous_weights` is the digest of
        the previous stage's model (None for the first stage); returns this stage's. `clock` times
        the cache build and the fit."""
        with stage_lock(self.lock_path, self.folder):
            state = self.state()
            reason = self._why_not_reusable(state, previous_weights)
            if reason is None and state is not None and state["status"] == "done":
                print(f"[pipeline] {self.spec.name}: done earlier with the same config and inputs, skipping")
                return state["weights"]
            if reason is not None:
                self._set_aside(state, reason)
            return self._fit(previous_weights, clock)

    def _why_not_reusable(self, state: dict[str, Any] | None, previous_weights: str | None) -> str | None:
        """Why the folder cannot be resumed or skipped (None: it can, or there is none)."""
        if not self.folder.exists():
            return None
        if state is None:
            return f"{self.state_path} is missing or unreadable"
        if state.get("hash") != self.hash:
            return "config or inputs changed"
        if state.get("previous_weights") != previous_weights:
            return "the previous stage's model changed since this stage started from it"
        if state.get("status") == "done" and weights_digest(self.folder) != state.get("weights"):
            return f"its exported model ({' + '.join(MODEL_FILES)}) is missing or changed since it finished"
        return None

    def _fit(self, previous_weights: str | None, clock: PhaseClock) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "config.yaml"
        atomic_write_text(config_path, yaml.safe_dump(self.config, sort_keys=False))
        self.write_state("running", previous_weights)
        if feature_cache_roots(self.config):
            with clock.phase(f"{self.spec.name}: feature cache"):
                self._build_feature_cache(config_path)
        command = [sys.executable, "-m", "stages.cli", "fit", "--config", str(config_path)]
        last = self.folder / CHECKPOINTS / "last.ckpt"
        if last.is_file():
            print(f"[pipeline] {self.spec.name}: resuming from {last}")
            command += ["--ckpt_path", str(last)]
        else:
            configs = [self.spec.config] if isinstance(self.spec.config, str) else self.spec.config
            print(f"[pipeline] {self.spec.name}: training ({' + '.join(configs)})")
        started = time.monotonic()
        returncode = run_child(command)
        if returncode != 0:
            raise PipelineError(
                f"stage {self.spec.name!r} failed ({_exit_status(returncode)}); fix the cause and run the same"
                f" command again: it resumes from {last} if the stage got that far"
            )
        weights = weights_digest(self.folder)
        if weights is None:
            raise PipelineError(
                f"stage {self.spec.name!r} finished without exporting {self.folder / MODEL_FILES[0]}:"
                " its config needs the stages.ExportPretrained callback"
            )
        seconds = time.monotonic() - started
        self.write_state("done", previous_weights, weights, seconds)
        from oneencoder.precision import PRECISION_RECORD  # here: `oneencoder compare` imports this module without torch

        precision = (read_json(self.folder / PRECISION_RECORD) or {}).get("precision")
        clock.phases.append((f"{self.spec.name}: training" + (f" ({precision})" if precision else ""), seconds))
        print(f"[pipeline] {self.spec.name}: done in {duration(seconds)}")
        return weights

    def _build_feature_cache(self, config_path: Path) -> None:
        """Encode the stage's data before `fit`, in this process: under DDP the other ranks would wait
        for rank 0's build at a barrier that times out after 30 minutes, which a large set outlasts;
        and a process of its own would import torch and Lightning once more (6-8 s on 2 CPU cores).
        A complete cache is checked and left as it is; an interrupted build resumes."""
        print(f"[pipeline] {self.spec.name}: feature cache")
        try:
            build_stage_cache(["--config", str(config_path)])
        except Exception as error:
            if not is_user_mistake(error):
                raise
            raise PipelineError(
                f"stage {self.spec.name!r}: building its feature cache failed: {error} Fix the cause and run the"
                " same command again: the build resumes at its first unfinished shard"
            ) from error

    def _set_aside(self, state: dict[str, Any] | None, reason: str) -> None:
        old = (state or {}).get("hash", "unknown")[:8]
        target = self.folder.with_name(f"{self.folder.name}{STALE}{old}")
        suffix = 1
        while target.exists():
            target = self.folder.with_name(f"{self.folder.name}{STALE}{old}-{suffix}")
            suffix += 1
        print(f"[pipeline] {self.spec.name}: {reason}; keeping the old output as {target}")
        self.folder.rename(target)


def stage_lock(path: Path, folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the stage's lock, or stop naming the runner that holds it. The lock goes with the process
    holding it, so a killed runner leaves none behind, and its stage process dies with it
    (stages/processes.py)."""

    def refuse(holder: str) -> None:
        raise PipelineError(
            f"stage folder {folder} is in use by another pipeline run (pid {holder}, holding {path}); wait"
            f" for it to finish, or stop it (kill {holder}) and run the same command again to resume"
        )

    return exclusive_lock(path, refuse)


def weights_digest(folder: Path) -> str | None:
    """sha256 over the exported model's files, None while one is missing: what results and later
    stages depend on, whatever config was meant to produce it."""
    paths = [folder / name for name in MODEL_FILES]
    if not all(path.is_file() for path in paths):
        return None
    return hashlib.sha256("".join(_file_digest(path) for path in paths).encode()).hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object an earlier run wrote, or None when the file is absent or unreadable (a full disk
    under older code left 0-byte files): with a warning, the step that writes it then runs again."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("%s cannot be read (%s); treating it as absent", path, error)
        return None
    if not isinstance(data, dict):
        log.warning("%s holds %s, not a JSON object; treating it as absent", path, type(data).__name__)
        return None
    return data


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


# --- the whole pipeline -------------------------------------------------------------------------------


@dataclass
class StartModel:
    """The model a pipeline's first stage starts from (`start_from`), with the pairs trained into it."""

    folder: Path
    weights: str
    pairs: set[frozenset[str]]


def start_model(spec: PipelineSpec) -> StartModel | None:
    if spec.start_from is None:
        return None
    folder = Path(spec.start_from)
    weights = weights_digest(folder)
    if weights is None:
        raise PipelineError(
            f"start_from: {folder} holds no exported model ({' + '.join(MODEL_FILES)}); name a finished stage's"
            " folder of another pipeline (e.g. outputs/pipeline/demo/up) or a model saved with save_pretrained"
        )
    return StartModel(folder, weights, model_trained_pairs(folder))


def model_trained_pairs(folder: Path) -> set[frozenset[str]]:
    """The pairs trained into the model in a stage folder: its stage's (stage.json `pairs`, else what
    its config.yaml names), then those of the folder that stage started from (`previous`), and so on
    back. A folder that no stage wrote adds none."""
    pairs: set[frozenset[str]] = set()
    seen: set[Path] = set()
    current: Path | None = folder
    while current is not None and current.resolve() not in seen:
        seen.add(current.resolve())
        state = read_json(current / STAGE_STATE) or {}
        config = _stage_folder_config(current)
        if isinstance(state.get("pairs"), list):
            pairs |= {frozenset(pair) for pair in state["pairs"]}
        elif config is not None:
            pairs |= trained_pairs(config)
        previous = (((config or {}).get("model") or {}).get("init_args") or {}).get("previous")
        current = Path(previous) if previous else None
    return pairs


def _stage_folder_config(folder: Path) -> dict[str, Any] | None:
    """The config.yaml a stage wrote in its folder; None when there is none, or no model in it."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) and isinstance(config.get("model"), dict) else None


def plan(spec: PipelineSpec, start: StartModel | None = None) -> list[StageRun]:
    """Resolve every stage's config and hash, in order, without running anything. The first stage
    starts from `start` (start_from's model; its weights digest counts in that stage's hash)."""
    runs: list[StageRun] = []
    previous_folder, previous_hash = (start.folder, start.weights) if start else (None, None)
    for stage in spec.stages:
        folder = Path(spec.output) / stage.name
        config = resolve_stage_config(stage, folder, previous_folder)
        if start is not None and not runs and "previous" not in ((config.get("model") or {}).get("init_args") or {}):
            raise PipelineError(
                f"stage {stage.name!r}: start_from is set but this first stage's model ({config['model'].get('class_path')})"
                " does not start from a model; make the first stage one that takes `previous` (AlignStage,"
                " ProgressiveStage) or drop start_from"
            )
        run = StageRun(stage, folder, config, stage_hash(config, previous_hash))
        runs.append(run)
        previous_folder, previous_hash = run.folder, run.hash
    return runs


@dataclass
class StageModel:
    """A model the pipeline evaluates stage by stage: its stage's name, folder and weights digest,
    the pairs that stage trained and all the pairs trained into it so far."""

    name: str
    folder: Path
    weights: str
    pairs: set[frozenset[str]]
    trained: set[frozenset[str]]


def run_pipeline(path: str | os.PathLike[str]) -> Path:
    """Run (or skip, or resume) every stage, then the evaluation; returns the final model's folder."""
    spec = PipelineSpec.load(path)
    start = start_model(spec)
    runs = plan(spec, start)
    models = [StageModel(START, start.folder, start.weights, start.pairs, start.pairs)] if start else []
    clock = PhaseClock()
    for run in runs:
        weights = run.run(models[-1].weights if models else None, clock)
        pairs = trained_pairs(run.config)
        models.append(StageModel(run.spec.name, run.folder, weights, pairs, pairs.union(*(m.pairs for m in models))))
    output, final = Path(spec.output), models[-1]
    caches = [root for run in runs for root in feature_cache_roots(run.config)]  # the test split's frozen features
    for evaluation in spec.evaluation:
        final_results = _evaluate(evaluation, output, output, final, caches, clock)
        print(without_figures((output / f"{_results_stem(evaluation)}.md").read_text()))
        if spec.evaluate_each_stage and evaluation.by is None:  # a forgetting table compares pairs of modalities
            _evaluate_each_stage(evaluation, output, models, final_results, caches, clock)
    if spec.report:
        from .report import write_report

        with clock.phase("report"):
            report = write_report(output)
        print(f"[pipeline] report: {report}" if report else "[pipeline] report: no results, forgetting or training logs to draw")
    print(f"[pipeline] where the time went (skipped phases absent; also in {clock.write(output)}):\n{clock.table()}")
    return final.folder


def _evaluate_each_stage(spec: EvaluationSpec, output: Path, models: list[StageModel], final_results: Path,
                         caches: list[str], clock: PhaseClock) -> None:
    """The evaluation on every stage's model, in `<output>/<stage>/`, then the forgetting table."""
    from .forgetting import forgetting_table, write_forgetting

    results = {}
    for model in models:
        path = _evaluate(spec, output, output / model.name, model, caches, clock, reuse=final_results, of_stage=True)
        results[model.name] = read_json(path)
    table = forgetting_table([m.name for m in models], {m.name: m.pairs for m in models}, results)
    stem = f"forgetting-{spec.name}" if spec.name else "forgetting"
    table |= {"manifest": spec.manifest, "split": spec.split}
    print(write_forgetting(output, table, f"Forgetting on `{spec.manifest}`, split `{spec.split}`", stem))


def _results_stem(spec: EvaluationSpec) -> str:
    return f"results-{spec.name}" if spec.name else "results"


def _evaluate(spec: EvaluationSpec, output: Path, folder: Path, model: StageModel, caches: list[str],
              clock: PhaseClock, reuse: Path | None = None, of_stage: bool = False) -> Path:
    """Evaluate `model` into `folder`, unless results for these weights (their digest), settings and
    data are there already (or in `reuse`, then copied); returns the results.json path. A stage's
    model (`of_stage`) is evaluated on those of the listed modalities it has. The frozen features are
    read from the stages' feature `caches` where they serve (evaluate.serving_caches)."""
    from .evaluate import evaluate_folder
    from .report_data import embeddings_path

    settings = dataclasses.asdict(spec)
    name = settings.pop("name")
    if of_stage and spec.modalities is not None:
        settings["modalities"] = [m for m in spec.modalities if m in _model_modalities(model.folder)]
    label = (f"evaluation {name}" if name else "evaluation") + (f" of stage {model.name}" if of_stage else "")
    key = hashlib.sha256(json.dumps({"model": model.weights, "evaluation": settings,
                                     "manifest": _file_digest(Path(spec.manifest)),
                                     "media": _media_digest([spec.manifest], spec.modalities or list(MEDIA_FIELDS),
                                                            _signature_memo(output), spec.split)},
                                    sort_keys=True).encode()).hexdigest()
    stem = _results_stem(spec)
    results_path = folder / f"{stem}.json"
    # A plain evaluation's figures need its embeddings too (results written before they were saved lack them).
    embeddings = None if spec.by is not None else embeddings_path(folder, stem)
    if (read_json(results_path) or {}).get("hash") == key and (embeddings is None or embeddings.exists()):
        print(f"[pipeline] {label}: done earlier for this model and manifest ({results_path})")
    elif reuse is not None and reuse != results_path and (read_json(reuse) or {}).get("hash") == key and (
            embeddings is None or embeddings_path(reuse.parent, stem).exists()):
        folder.mkdir(parents=True, exist_ok=True)
        if embeddings is not None:
            atomic_write_with(embeddings, lambda tmp: shutil.copyfile(embeddings_path(reuse.parent, stem), tmp))
        for suffix in (".md", ".json"):  # the json, which says the results are there, last
            text = reuse.with_suffix(suffix).read_text()  # the tables: the figures are the run's, not the stage's
            atomic_write_text(folder / f"{stem}{suffix}", without_figures(text) if suffix == ".md" else text)
        print(f"[pipeline] {label}: the same model as {reuse}, results copied")
    else:
        print(f"[pipeline] {label}: {model.folder} on {spec.manifest} ({spec.split})")
        with clock.phase(label):
            if spec.by is None:
                evaluation = evaluate_folder(model.folder, feature_caches=caches, **settings)
                evaluation.trained = model.trained
            else:
                evaluation = evaluate_folder(model.folder, feature_caches=caches,
                                             **{k: v for k, v in settings.items() if k not in NOT_BY})
            evaluation.write(folder, extra={"hash": key}, stem=stem)
        print(f"[pipeline] {label}: done in {duration(clock.phases[-1][1])}")
    return results_path


def _model_modalities(folder: Path) -> list[str]:
    from oneencoder.model import read_config

    return list(read_config(folder).encoders)


"""``simclr finetune``: a classifier from a SimCLR checkpoint and a few labels, beside what
the same labels give without the pretraining.

Phases: the run's options (a resume takes them from the run's ``config.json``), the checkpoint,
the labelled splits and the class-balanced subset (:mod:`.subset`), the recipe, then the output
folder (held by one process from the start, and nothing is written into it before every input
was checked), the classifiers
(:mod:`.tuning`: fine-tuned from the checkpoint, and from scratch with ``--baseline scratch``),
the frozen-encoder probe (``--baseline linear``, :mod:`.linear_eval`), and the results:
``classifier.pt``, ``finetune.json``, ``confusion_matrix.csv``, ``metrics.jsonl``.

Reference: Chen et al. 2020 (arXiv:2002.05709), section 6 (semi-supervised learning, Table 7)
and appendix B.5; Chen et al. 2020b (arXiv:2006.10029), section 2.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from simclr_cli import allocator, signals
from simclr_cli.config import FINETUNE_MAY_CHANGE, FinetuneConfig, flag_name
from simclr_cli.console import StepProgress, get_console, phase
from simclr_cli.data.facts import recorded_dataset
from simclr_cli.errors import CheckpointError, OutputExistsError, plural
from simclr_cli.evaluation import subset as subsets
from simclr_cli.evaluation.finetune_data import LabelledData, build_recipe, load_labelled
from simclr_cli.evaluation.inference import (
    checkpoint_image_size,
    load_frozen_model,
    resolve_device,
)
from simclr_cli.evaluation.metrics import classification_metrics, confusion_csv
from simclr_cli.evaluation.tuning import Recipe, Tuner, classifier_logits
from simclr_cli.method.classifier import (
    Classifier,
    build_classifier,
    classifier_from_simclr,
    classifier_spec,
    kept_head_layers,
)
from simclr_cli.storage import fileio, runlock
from simclr_cli.storage.checkpoint import load_model
from simclr_cli.storage.classifier import load_classifier_payload, save_classifier
from simclr_cli.storage.registry import checkpoint_kind

CLASSIFIER = "classifier.pt"
RESULTS = "finetune.json"
CONFUSION = "confusion_matrix.csv"
CONFIG = "config.json"
# The resumable state of each classifier the command trains.
STATE_FILES = {"finetune": "finetune_last.pt", "scratch": "scratch_last.pt"}
# A folder holding any of these holds a run: a fresh fine-tune does not start there.
RUN_FILES = (CONFIG, subsets.SUBSET_FILE, "metrics.jsonl", *STATE_FILES.values(), CLASSIFIER,
             RESULTS, CONFUSION)  # fmt: skip
# Images per forward pass when scoring the test split and extracting the probe's features.
EVAL_BATCH = 256
ARM_NAMES = {
    "finetune": "fine-tuned from the checkpoint",
    "scratch": "from scratch (default init)",
    "linear": "linear probe (frozen encoder)",
}


# ----------------------------------------------------------------------------------------------
# the command


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """``simclr finetune``: fine-tune, train the baselines, evaluate, write the results.

    Returns:
        The summary the CLI prints (accuracies, the gaps, where the files are).

    Raises:
        UsageError, DatasetError, CheckpointError, OutputExistsError: before anything is
            written. OutputBusyError: another process writes the folder. Interrupted:
            SIGINT/SIGTERM, after the state was saved.
    """
    start = time.perf_counter()
    # One writer of the folder at a time, from before the run is read until the command ends.
    with runlock.hold_folder(cfg.resolved_out, "simclr finetune"):
        return _finetune(cfg, start)


def _finetune(cfg: FinetuneConfig, start: float) -> dict[str, Any]:
    """The body of :func:`run_finetune`, holding the lock of the output folder."""
    cfg = continue_run_config(cfg)
    out = cfg.resolved_out
    resuming = cfg.resume is not None and (out / CONFIG).is_file()
    if not resuming:
        refuse_existing_run(out)
    phase(f"loading the checkpoint {cfg.checkpoint}")
    pretrained, payload, ck_path = load_frozen_model(str(cfg.checkpoint), cfg.cache_dir)
    kept_head_layers(payload["model"], cfg.from_head_layer)  # a bad value, before the data
    device = resolve_device(cfg.resolved_device)
    allocator.configure_for(device.type)
    size = checkpoint_image_size(payload, cfg.image_size, cfg.dataset_kind)
    data = load_labelled(cfg, size, out / subsets.SUBSET_FILE if resuming else None)
    recipe = build_recipe(cfg, data, size)
    with run_folder(out):  # every input checked: from here on, the run writes into `out`
        if not resuming:
            write_run_start(cfg, data, out)
        results = train_classifiers(cfg, payload, ck_path, data, recipe, device, resuming)
        if "linear" in cfg.baseline:
            with timed(results, "linear"):
                results["linear"] = linear_baseline(pretrained, data, cfg, device)
        result = finetune_result(cfg, ck_path, data, recipe, results, time.perf_counter() - start)
        files = write_results(result, out)
    print_finetune(result)
    return finetune_summary(result, files, out)


def train_classifiers(
    cfg: FinetuneConfig,
    payload: dict[str, Any],
    ck_path: Path,
    data: LabelledData,
    recipe: Recipe,
    device: torch.device,
    resuming: bool,
) -> dict[str, dict[str, Any]]:
    """Train and score the fine-tuned classifier (and the one from scratch with ``--baseline
    scratch``), each from its saved state when resuming; SIGINT/SIGTERM save and stop."""
    out = cfg.resolved_out
    cspec = classifier_spec(payload["model"], len(data.classes), cfg.from_head_layer)
    cspec["image_size"] = recipe.image_size  # what the classifier is trained and evaluated at
    fields = {"model": cspec, "dataset": data.name, "config": json_config(cfg),
              "classes": data.classes}  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    with signals.stop_requests() as stop:
        for arm in ("finetune", *(b for b in cfg.baseline if b == "scratch")):
            model = initial_classifier(arm, payload, cspec, cfg.seed)
            tuner = Tuner(
                arm, model.to(device, memory_format=torch.channels_last), recipe,
                Subset(data.train, data.fit), Subset(data.train, data.val) if data.val else None,
                device, {**fields, "source": str(ck_path) if arm == "finetune" else None},
                out / STATE_FILES[arm], RunRecords(out), cfg.checkpoint_every, cfg.workers,
            )  # fmt: skip
            with timed(results, arm):
                results[arm] = train_and_test(tuner, data, device, out, resuming, stop)
    return results


@contextlib.contextmanager
def timed(results: dict[str, dict[str, Any]], arm: str) -> Iterator[None]:
    """Add the wall time and this process's CPU time (user + system, every thread; not
    DataLoader workers) of the block to ``results[arm]``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    results[arm]["time_s"] = round(time.perf_counter() - wall, 1)
    results[arm]["cpu_s"] = round(time.process_time() - cpu, 1)


def continue_run_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """The options of the run ``--resume auto --out DIR`` continues (its ``config.json``), with
    what this command may change (:data:`~simclr_cli.config.FINETUNE_MAY_CHANGE`); a fresh run
    gets its paths made absolute, so a resume from another folder finds them.

    Raises:
        CheckpointError: nothing to continue, an unreadable run, or given options that differ
            from the run's (all listed in one line).
    """
    if cfg.resume is None or not (cfg.resolved_out / CONFIG).is_file():
        if cfg.checkpoint is None:
            raise CheckpointError(
                f"{cfg.resolved_out} holds no fine-tuning run to continue (no {CONFIG}); start "
                f"one with simclr finetune --checkpoint ... --out {cfg.resolved_out}"
            )
        return with_absolute_paths(cfg)
    path = cfg.resolved_out / CONFIG
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {path} ({e}); start a new run with another --out"
        ) from None
    if not isinstance(saved, dict) or "labels_per_class" not in saved:
        raise CheckpointError(
            f"{path} is not the config of a fine-tuning run; give the --out of a `simclr "
            "finetune` run"
        )
    given = with_absolute_paths(cfg).model_dump(mode="json")
    fixed = set(cfg.model_fields_set) - set(FINETUNE_MAY_CHANGE) - {"resume", "out"}
    differ = [
        name
        for name in FinetuneConfig.model_fields
        if name in fixed and given[name] != saved.get(name)
    ]
    if differ:
        listed = "; ".join(f"{flag_name(n)} {saved.get(n)} (given: {given[n]})" for n in differ)
        raise CheckpointError(
            f"{path} belongs to a run with {listed}; leave out "
            f"{' '.join(map(flag_name, differ))} to continue it as it was, or start a new --out"
        )
    options = {k: v for k, v in saved.items() if k in FinetuneConfig.model_fields}
    for name in ("dataset", "train_dir", "test_dir"):  # a folder that moved: name the run file
        if options.get(name) is not None:
            recorded_dataset(str(options[name]), path)
    here = {"resume", "out"} | (set(cfg.model_fields_set) & set(FINETUNE_MAY_CHANGE))
    options.update({name: getattr(cfg, name) for name in here})
    return FinetuneConfig(**options)


def with_absolute_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with its checkpoint, folders and subset file as absolute paths (what
    ``config.json`` records for a resume)."""
    update: dict[str, Any] = {}
    if cfg.checkpoint is not None:
        update["checkpoint"] = absolute_ref(cfg.checkpoint)
    if cfg.dataset is not None and cfg.dataset_kind == "folder":
        update["dataset"] = str(Path(cfg.dataset).expanduser().resolve())
    for name in ("train_dir", "test_dir", "subset"):
        value = getattr(cfg, name)
        if value is not None:
            update[name] = Path(value).expanduser().resolve()
    return cfg.model_copy(update=update)


def absolute_ref(ref: str) -> str:
    """A ``--checkpoint`` that names a local file or run folder, as an absolute path."""
    if checkpoint_kind(ref) in ("file", "run"):
        return str(Path(ref).expanduser().resolve())
    return ref


def refuse_existing_run(out: Path) -> None:
    """A fresh fine-tune never writes over another run's files.

    Raises:
        OutputExistsError: ``out`` holds files of a run.
    """
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise OutputExistsError(
            f"{out} already holds a run ({', '.join(found)}); continue a fine-tune there with "
            f"--resume auto --out {out}, or choose another --out"
        )


@contextlib.contextmanager
def run_folder(out: Path) -> Iterator[Path]:
    """The output folder, for the part of the run that writes into it (already made and locked
    by :func:`run_finetune`; made here too if missing; temporary files of saves that were
    killed removed)."""
    out.mkdir(parents=True, exist_ok=True)
    fileio.remove_dead_temps(out)
    yield out


# ----------------------------------------------------------------------------------------------
# the run's first files


def write_run_start(cfg: FinetuneConfig, data: LabelledData, out: Path) -> None:
    """``config.json`` (what a resume continues) and ``subset.txt`` (the labels used)."""
    fileio.write_json_atomic(out / CONFIG, json_config(cfg))
    how = (
        f"read from {cfg.subset}"
        if cfg.subset is not None
        else f"{cfg.labels_per_class} per class"
        if cfg.labels_per_class is not None
        else f"{cfg.label_fraction if cfg.label_fraction is not None else 1:g} of each class"
    )
    header = (
        f"simclr-cli label subset: {plural(len(data.subset), 'image')} of {data.name} (train "
        f"split), {how}, seed {cfg.seed}"
    )
    text = subsets.format_subset(data.subset, data.keys, data.labels, data.classes, header)
    fileio.write_text_atomic(out / subsets.SUBSET_FILE, text)


def json_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The options as given plus every derived value, JSON-able (``config.json``)."""
    return {**cfg.model_dump(mode="json"), "resolved": cfg.derived_values()}


# ----------------------------------------------------------------------------------------------
# the classifiers


def initial_classifier(
    arm: str, payload: dict[str, Any], cspec: dict[str, Any], seed: int
) -> Classifier:
    """The classifier an arm starts from: the checkpoint's encoder (and kept head layers) with a
    new linear layer, or the same architecture with torchvision's default initialisation
    (``scratch``); seeded without touching the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arm == "scratch":
            return build_classifier(cspec, zero_init_residual=False)
        simclr = load_model(payload).requires_grad_(True)
        return classifier_from_simclr(simclr, cspec, cspec["num_classes"], cspec["from_head_layer"])


class RunRecords:
    """``metrics.jsonl``: one line per classifier and epoch."""

    def __init__(self, out: Path) -> None:
        self.path = out / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        fileio.append_line(self.path, json.dumps(record))


def train_and_test(
    tuner: Tuner,
    data: LabelledData,
    device: torch.device,
    out: Path,
    resuming: bool,
    stop: signals.StopRequest,
) -> dict[str, Any]:
    """Train one classifier (from its saved state when resuming) and score it on the test
    split; the fine-tuned one is also written as ``classifier.pt``."""
    state = out / STATE_FILES[tuner.name]
    if resuming and state.is_file():
        tuner.restore(load_classifier_payload(state))
        if tuner.global_step:
            get_console().print(f"resuming the {tuner.name} classifier at step {tuner.global_step}")
    recipe = tuner.recipe
    with StepProgress(tuner.name, recipe.total_steps, tuner.global_step, "step",
                      fields=("epoch", "loss")) as progress:  # fmt: skip
        tuner.fit(stop, progress)
    model = tuner.kept()
    logits, labels = classifier_logits(
        model, data.test, EVAL_BATCH, device, recipe.precision, tuner.workers,
        description=f"testing the {tuner.name} classifier",
    )  # fmt: skip
    metrics = classification_metrics(logits, labels, len(data.classes), data.classes)
    if tuner.selection is not None:
        metrics.update(
            selected_epoch=tuner.selection["epoch"], val_top1=tuner.selection["val_top1"]
        )
    metrics.update(final_loss=tuner.last.get("loss"), train_time_s=round(tuner.train_time, 1))
    if tuner.name == "finetune":
        final = tuner.payload(final=True)
        final["metrics"].update({k: metrics[k] for k in ("top1", "top5")})
        save_classifier(final, out / CLASSIFIER)
    return metrics


def linear_baseline(
    pretrained: Any, data: LabelledData, cfg: FinetuneConfig, device: torch.device
) -> dict[str, Any]:
    """The frozen encoder's linear probe (and kNN vote) on the same training images."""
    from simclr_cli.evaluation.linear_eval import evaluate_frozen

    phase("the linear probe baseline (frozen encoder, same labels)")
    model = pretrained.to(device, memory_format=torch.channels_last)
    metrics = evaluate_frozen(
        model, Subset(data.train, data.fit), data.test, len(data.classes), device,
        batch_size=EVAL_BATCH, precision=cfg.resolved_precision,
        workers=cfg.workers, seed=cfg.seed, class_names=data.classes,
    )  # fmt: skip
    keys = ("top1", "top5", "per_class", "confusion_matrix", "knn_top1", "weight_decay", "knn")
    return {k: metrics[k] for k in keys}


# ----------------------------------------------------------------------------------------------
# results


def finetune_result(
    cfg: FinetuneConfig,
    ck_path: Path,
    data: LabelledData,
    recipe: Recipe,
    results: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """``finetune.json``: the fine-tuned classifier's test scores, the subset, the recipe and
    the baselines."""
    main = results["finetune"]
    labels = {"labels_per_class": cfg.labels_per_class, "label_fraction": cfg.label_fraction,
              "subset_file": None if cfg.subset is None else str(cfg.subset)}  # fmt: skip
    subset = {
        "file": subsets.SUBSET_FILE,
        **labels,
        "seed": cfg.seed,
        "images": len(data.subset),
        "share_of_training_labels": len(data.subset) / data.labelled,
        "per_class": subsets.subset_summary(data.subset, data.labels, data.classes),
        "train_images": len(data.fit),
        "val_images": len(data.val),
        "val_keys": [data.keys[i] for i in data.val],
    }
    baselines = {arm: metrics for arm, metrics in results.items() if arm != "finetune"}
    return {
        "checkpoint": str(ck_path),
        "dataset": data.name,
        "classes": data.classes,
        "test_images": sum(row["support"] for row in main["per_class"]),
        **main,
        "subset": subset,
        "recipe": recipe.as_dict() | {"from_head_layer": cfg.from_head_layer},
        "baselines": baselines,
        "run_time_s": round(seconds, 1),  # the command; time_s and cpu_s are the classifier's
    }


def write_results(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """``confusion_matrix.csv``, then ``finetune.json`` (written last: the run is complete)."""
    names = [row["class"] for row in result["per_class"]]
    confusion = fileio.write_text_atomic(
        out / CONFUSION, confusion_csv(names, result["confusion_matrix"])
    )
    results = fileio.write_text_atomic(out / RESULTS, json.dumps(result, indent=2) + "\n")
    return {"classifier": out / CLASSIFIER, "results": results, "confusion": confusion}


def verdict(result: dict[str, Any]) -> str:
    """One line: the fine-tuned top-1, then each baseline's with the gap (as linear-eval's)."""
    parts = [f"fine-tuned {100 * result['top1']:.1f}% top-1"]
    for arm, m in result["baselines"].items():
        gap = 100 * (result["top1"] - m["top1"])
        parts.append(f"{ARM_NAMES[arm]} {100 * m['top1']:.1f}% ({gap:+.1f} points)")
    return "; ".join(parts)


def finetune_summary(result: dict[str, Any], files: dict[str, Path], out: Path) -> dict[str, Any]:
    """The few numbers the CLI prints after the run; everything else is in the JSON."""
    subset = result["subset"]
    summary: dict[str, Any] = {
        "top1": result["top1"],
        "top5": result["top5"],
        "labels": f"{subset['images']} images ({100 * subset['share_of_training_labels']:.3g}% of "
        f"the training labels), {subset['train_images']} trained on",
    }
    if "val_top1" in result:
        summary["selected_epoch"] = (
            f"{result['selected_epoch']} (held-out top-1 {100 * result['val_top1']:.1f}%)"
        )
    for arm, m in result["baselines"].items():
        summary[f"{arm}_top1"] = m["top1"]
    if result["baselines"]:
        summary["verdict"] = verdict(result)
    summary.update(time_s=result["run_time_s"], **{k: str(v) for k, v in files.items()})
    summary["next_commands"] = [
        f"simclr predict --checkpoint {files['classifier']} IMAGES...",
        f"simclr export --checkpoint {files['classifier']} --format onnx "
        f"--out {out / 'classifier.onnx'}",
        f"simclr report {out}",
    ]
    return summary


def print_finetune(result: dict[str, Any]) -> None:
    """Per-class accuracy, then the classifier beside its baselines, on stdout."""
    from rich.table import Table

    from simclr_cli.console import stdout_console
    from simclr_cli.evaluation.linear_eval import add_per_class_rows

    table = Table(
        title=f"Fine-tuned from {result['checkpoint']} on {result['subset']['images']} labels"
    )
    for column in ("class", "accuracy", "test images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    add_per_class_rows(table, result)
    console = stdout_console()
    console.print(table)
    if result["baselines"]:
        rows = Table(title="Against baselines (same labels and test images)")
        for column in ("classifier", "top-1", "top-5", "gap (top-1)"):
            rows.add_column(column, justify="left" if column == "classifier" else "right")
        rows.add_row(
            ARM_NAMES["finetune"],
            f"{100 * result['top1']:.2f}%",
            f"{100 * result['top5']:.2f}%",
            "",
        )
        for arm, m in result["baselines"].items():
            gap = f"{100 * (result['top1'] - m['top1']):+.1f} points"
            rows.add_row(ARM_NAMES[arm], f"{100 * m['top1']:.2f}%", f"{100 * m['top5']:.2f}%", gap)
        console.print(rows)

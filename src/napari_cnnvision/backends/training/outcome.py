"""What a finished training job says, in one shape for every trainer (the U-Net's and the
detector's result objects, the localizer's and StarDist's dicts): epochs run, best epoch, whether
it was stopped, seconds and the final validation metrics. numpy only."""
from __future__ import annotations

from dataclasses import dataclass, field

#: the metric the widget plots and the CLI prints first, per task: (card key, label)
MAIN_METRIC = {"segment": ("ap@0.5", "AP@0.5"), "detect": ("map@0.5", "mAP@0.5"), "localize": ("accuracy", "accuracy")}

#: what a kept base holds, per task: a segmentation model's thresholds are re-chosen on the
#: validation part; a detector's and a localizer's class head is rebuilt for the user's classes
#: (the rows of classes the base knows kept), with nothing re-chosen
KEPT_BASE = {"segment": "the base's weights (thresholds re-chosen)",
             "detect": "the base's weights (its class head rebuilt for these classes)",
             "localize": "the base's weights (its class head rebuilt for these classes)"}


@dataclass
class TrainResult:
    """A training run's outcome; ``card`` is the new model's card (usable by name at once)."""

    name: str
    task: str
    card: object = None
    model_dir: str | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped: bool = False
    seconds: float | None = None
    metrics: dict = field(default_factory=dict)
    #: no epoch of a fine-tune beat its base model on the validation part: the new model holds the
    #: base's weights (see :data:`KEPT_BASE`)
    kept_base: bool = False

    @property
    def score(self) -> float | None:
        """The task's main validation metric (AP@0.5, mAP@0.5 or accuracy)."""
        key = MAIN_METRIC[self.task][0]
        v = self.metrics.get(key, self.metrics.get(f"val_{key}"))
        return None if v is None else float(v)

    def describe(self) -> str:
        """One line: the model, how it ended and its validation metric."""
        how = f"stopped after {self.epochs_run} epoch(s)" if self.stopped else f"{self.epochs_run} epoch(s)"
        label = MAIN_METRIC[self.task][1]
        score = "n/a" if self.score is None else f"{self.score:.3f}"
        best = f", best epoch {self.best_epoch}" if self.best_epoch is not None and not self.kept_base else ""
        out = f"saved model {self.name!r} ({how}{best}, val {label} {score})"
        if self.kept_base:
            out += (": the training did not beat the base model on the validation part, so the new model keeps "
                    f"{KEPT_BASE[self.task]}; more or more varied annotations may help")
        return out


def job_outcome(result, name: str, task: str, card=None) -> TrainResult:
    """A :class:`TrainResult` from any trainer's job result (a dataclass or a dict)."""
    get = (lambda k: result.get(k)) if isinstance(result, dict) else (lambda k: getattr(result, k, None))
    metrics = get("metrics") or {}
    if isinstance(metrics.get("val"), dict):
        metrics = metrics["val"]
    seconds = get("seconds")
    return TrainResult(name=name, task=task, card=card, model_dir=get("model_dir"), epochs_run=get("epochs_run"),
                       best_epoch=get("best_epoch"), stopped=bool(get("stopped")),
                       seconds=None if seconds is None else float(seconds),
                       metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                       kept_base=bool(get("kept_base")))

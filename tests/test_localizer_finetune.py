"""Fine-tuning a localizer from a base model (``localizer.train`` with ``base``): the class head
rebuilt for the user's classes (the rows of the classes the base knows by name kept), the base's
network, input size and normalization, and the base competing as "epoch 0"."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_localizer import CLASSES, SIZE, synth, tiny_settings  # noqa: E402

from napari_cnnvision.backends.dispatch import card_payload  # noqa: E402
from napari_cnnvision.backends.localizer import io as lio  # noqa: E402
from napari_cnnvision.backends.localizer.finetune import start_from  # noqa: E402
from napari_cnnvision.backends.localizer.job import train_job  # noqa: E402
from napari_cnnvision.backends.localizer.train import prepare_set, train_localizer  # noqa: E402
from napari_cnnvision.core.registry import ModelRegistry  # noqa: E402

BASE_NORM = {"type": "percentile", "pmin": 2.0, "pmax": 99.5}  # not the default: a fine-tune must keep it


class Rec:
    stop_requested = False

    def __init__(self):
        self.events = []

    def __call__(self, fraction, message="", **metrics):
        self.events.append((message, metrics))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A user folder holding ``tiny-base``: a localizer of [square, disk] trained on 64 images."""
    torch.set_num_threads(1)
    res = train_localizer(prepare_set(*synth(64, 0), (SIZE, SIZE), BASE_NORM),
                          prepare_set(*synth(16, 1), (SIZE, SIZE), BASE_NORM), CLASSES, tiny_settings())
    assert res.metrics["accuracy"] > 0.9
    folder = tmp_path_factory.mktemp("user")
    lio.save_model(folder / "tiny-base", res.model, res.config, CLASSES, normalization=BASE_NORM)
    return folder


def test_the_class_head_keeps_the_rows_of_the_classes_the_base_knows(base_dir):
    base = lio.load_model(base_dir / "tiny-base", use_cache=False)
    start = start_from(base_dir / "tiny-base", ["disk", "triangle"])
    assert start.config.n_classes == 2 and start.config.widths == base.config.widths
    assert start.class_head == {"kept": ["disk"], "new": ["triangle"], "dropped": ["square"]}
    assert start.normalization == BASE_NORM
    old = base.model.state_dict()
    for key in ("class_head.weight", "class_head.bias"):
        assert torch.equal(start.state[key][0], old[key][1])  # disk: base row 1 -> 0
        assert not any(torch.equal(start.state[key][1], old[key][i]) for i in range(2))  # triangle is fresh
    assert all(torch.equal(start.state[k], v) for k, v in old.items() if not k.startswith("class_head"))


def test_a_fine_tune_takes_the_bases_network_and_normalization(base_dir, tmp_path):
    ims, boxes, labels = synth(12, 5)
    names = ["disk", "square"]  # the base's classes in another order: rows swapped, none fresh
    rec = Rec()
    out = train_job(rec, ims[:8], boxes[:8], 1 - labels[:8], names, ims[8:], boxes[8:], 1 - labels[8:],
                    out_dir=str(tmp_path), name="mine", base=card_payload(ModelRegistry(user_dir=base_dir)
                                                                              .get("tiny-base")),
                    settings={"epochs": 2, "batch_size": 8, "widths": [4, 8], "learning_rate": 1e-4})
    assert out["epochs_run"] == 2
    card = ModelRegistry(user_dir=tmp_path).get("mine")
    t = card.training
    assert t["base_model"] == "tiny-base" and "from_scratch" not in t
    assert t["class_head"] == {"kept": ["disk", "square"], "new": [], "dropped": []}
    assert t["settings"]["widths"] == [8, 16, 24, 32] and t["settings"]["input_size"] == [SIZE, SIZE]  # the base's
    assert card.normalization == BASE_NORM and card.classes == names and "fine-tuned from tiny-base" in card.description
    base_acc = [m["base_val_accuracy"] for _, m in rec.events if "base_val_accuracy" in m]
    assert len(base_acc) == 1 and base_acc[0] > 0.9  # the base knows these classes (rows swapped by name)
    from napari_cnnvision.backends.localizer.predict import localize

    res = localize(ims[9], card)
    assert res.n_objects == 1 and res.table["class"][0] == names[1 - labels[9]]


def test_a_fine_tune_that_does_not_beat_its_base_keeps_the_base(base_dir, tmp_path):
    from napari_cnnvision.backends.training.outcome import job_outcome

    ims, boxes, labels = synth(12, 6)
    out = train_job(Rec(), ims[:8], boxes[:8], labels[:8], CLASSES, ims[8:], boxes[8:], labels[8:],
                    out_dir=str(tmp_path), name="wrecked",
                    base=card_payload(ModelRegistry(user_dir=base_dir).get("tiny-base")),
                    settings={"epochs": 2, "batch_size": 8, "learning_rate": 0.9, "warmup_epochs": 0, "ema": 0.0})
    assert out["kept_base"] and out["best_epoch"] == 0 and out["epochs_run"] == 2
    new, base = (lio.load_model(p, use_cache=False).model.state_dict()
                 for p in (tmp_path / "wrecked", base_dir / "tiny-base"))
    assert all(torch.equal(new[k], v) for k, v in base.items())
    card = ModelRegistry(user_dir=tmp_path).get("wrecked")
    assert card.training["kept_base"] is True and card.training["best_epoch"] == 0
    text = job_outcome(out, "wrecked", "localize").describe()
    assert "keeps the base's weights" in text and "best epoch" not in text and "threshold" not in text


def test_a_base_that_is_not_a_localizer_is_refused(tmp_path):
    from napari_cnnvision.core.axes import InputError

    ims, boxes, labels = synth(4, 7)
    with pytest.raises(InputError, match="'nuclei-unet' is not a localizer"):
        train_job(Rec(), ims[:2], boxes[:2], labels[:2], CLASSES, out_dir=str(tmp_path), name="nope",
                  base=card_payload(ModelRegistry().get("nuclei-unet")), settings={"epochs": 1})
    assert not (tmp_path / "nope").exists()


def test_a_bad_setting_is_named_before_the_base_is_loaded(tmp_path, monkeypatch):
    from napari_cnnvision.backends.localizer import finetune
    from napari_cnnvision.core.axes import InputError

    def never(*a, **k):
        raise AssertionError("the base was loaded before the settings were checked")

    monkeypatch.setattr(finetune, "start_from", never)
    ims, boxes, labels = synth(4, 7)
    with pytest.raises(InputError, match="epochs"):
        train_job(Rec(), ims[:2], boxes[:2], labels[:2], CLASSES, out_dir=str(tmp_path), name="bad",
                  base=card_payload(ModelRegistry().get("wbc-localizer")), settings={"epochs": "many"})
    assert not (tmp_path / "bad").exists()

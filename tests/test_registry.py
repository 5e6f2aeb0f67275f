import json

import pytest

from napari_cnnvision.core.registry import (CorruptModel, ModelCard, ModelNotFound, ModelRegistry, read_card,
                                            write_card)


def make_registry(tmp_path):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    return ModelRegistry(user_dir=user, shipped_dir=shipped), shipped, user


def test_three_sources(tmp_path):
    reg, shipped, user = make_registry(tmp_path)
    (shipped / "nuc").mkdir()
    write_card(ModelCard("nuc", "segment", "stardist2d", ["nucleus"]), shipped / "nuc")
    (user / "mine").mkdir()
    write_card(ModelCard("mine", "localize", "localizer", ["WBC"], axes="YXC", channels=3), user / "mine")
    cards = {c.name: c for c in reg.list()}
    assert cards["nuc"].source == "shipped"
    assert cards["mine"].source == "user" and cards["mine"].classes == ["WBC"]
    assert cards["2D_versatile_he"].source == "pretrained" and cards["2D_versatile_he"].channels == 3
    assert [c.name for c in reg.list("localize")] == ["mine"]
    assert reg.default("segment").name == "nuc"


def test_card_roundtrip_and_extra_fields(tmp_path):
    card = ModelCard("m", "segment", "unet", ["bg", "fg"], metrics={"val": {"ap50": 0.9}},
                     training={"command": "x"})
    write_card(card, tmp_path)
    d = json.loads((tmp_path / "model.json").read_text())
    assert "source" not in d and "path" not in d
    d["future_field"] = 1
    (tmp_path / "model.json").write_text(json.dumps(d))
    back = read_card(tmp_path)
    assert back.metrics == {"val": {"ap50": 0.9}} and back.extra == {"future_field": 1}


def test_stardist_folder_without_card(tmp_path):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "config.json").write_text(json.dumps({"n_dim": 3, "n_channel_in": 1}))
    card = read_card(tmp_path / "sd")
    assert card.backend == "stardist3d" and card.axes == "ZYX"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"name": "x"}),
                                     json.dumps({"name": "x", "task": "dance", "backend": "b"})])
def test_corrupt_cards_are_clear_errors(tmp_path, content):
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(CorruptModel):
        read_card(tmp_path)


def test_missing_model(tmp_path):
    reg, _, _ = make_registry(tmp_path)
    with pytest.raises(ModelNotFound, match="no model named"):
        reg.get("nope")
    with pytest.raises(ModelNotFound, match="no model folder"):
        reg.get(str(tmp_path / "missing" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="not a model folder"):
        reg.get(str(tmp_path / "empty"))


def test_corrupt_user_model_is_skipped_in_listing(tmp_path):
    reg, _, user = make_registry(tmp_path)
    (user / "broken").mkdir()
    (user / "broken" / "model.json").write_text("{")
    assert "broken" not in [c.name for c in reg.list()]


def test_dot_folders_are_never_listed(tmp_path):
    """Leftovers of an interrupted model-folder swap (`.name.*.tmp`, `.name.old-*`) hold cards too."""
    reg, _, user = make_registry(tmp_path)
    for sub in ("mine", ".mine.k2j4.tmp", ".mine.old-0123abcd", ".hidden"):
        (user / sub).mkdir()
        write_card(ModelCard("mine" if sub != ".hidden" else "hidden", "segment", "unet"), user / sub)
    users = [c for c in reg.list() if c.source == "user"]
    assert [(c.name, c.path) for c in users] == [("mine", str(user / "mine"))]


def test_a_swap_interrupted_between_its_renames_still_finds_the_old_model(tmp_path):
    """Killed after `name` -> `.name.old-*` and before the new folder was renamed in: the complete
    old copy is the model, by name and by path, until the next save recovers it."""
    reg, _, user = make_registry(tmp_path)
    old = user / ".mine.old-0000000000000001ab"
    old.mkdir()
    write_card(ModelCard("mine", "segment", "unet", description="v1"), old)
    (user / ".mine.x1y2.tmp").mkdir()  # the new folder that was never renamed in (maybe incomplete)
    users = [c for c in reg.list() if c.source == "user"]
    assert [(c.name, c.path, c.description) for c in users] == [("mine", str(old), "v1")]
    assert reg.get("mine").path == str(old)
    assert read_card(user / "mine").path == str(old)
    assert reg.get(str(user / "mine")).description == "v1"


def test_default_model_follows_the_cards_default_mark(tmp_path):
    """A shipped card marked ``"default": true`` is the task's default even when it is not first."""
    import json

    from napari_cnnvision.core.registry import ModelRegistry

    for name, mark in (("a-model", False), ("b-model", True)):
        d = tmp_path / name
        d.mkdir()
        card = {"name": name, "task": "detect", "backend": "yolo"}
        if mark:
            card["extra"] = {"default": True}
        (d / "model.json").write_text(json.dumps(card))
    reg = ModelRegistry(user_dir=tmp_path / "none", shipped_dir=tmp_path)
    assert reg.default("detect").name == "b-model"
    assert ModelRegistry().default("detect").name == "bloodcells-yolo"

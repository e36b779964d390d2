import dataclasses

import pytest

from omniformer.config import ConfigError, ModelConfig, RunConfig, from_dict, load_config, parse_overrides


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.model.width % cfg.model.heads == 0


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  widht: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "model.widht" in msg and "width" in msg and str(path) in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown config key trian"):
        load_config(overrides=["--trian.steps=3"])


def test_overrides_coerce_types_and_nest():
    cfg = load_config(overrides=["--model.depth=6", "--pretrain.lr=3e-4", "--model.image.stem=patch",
                                 "--pretrain.compile=true", "--model.modalities=text,image"])
    assert cfg.model.depth == 6 and isinstance(cfg.model.depth, int)
    assert cfg.pretrain.lr == pytest.approx(3e-4)
    assert cfg.model.image.stem == "patch"
    assert cfg.pretrain.compile is True
    assert cfg.model.modalities == ["text", "image"]


def test_out_of_range_values_are_named():
    with pytest.raises(ConfigError, match="width"):
        from_dict(ModelConfig, {"width": 130, "heads": 4})
    with pytest.raises(ConfigError, match="dropout"):
        load_config(overrides=["--model.dropout=1.5"])
    with pytest.raises(ConfigError, match="patch_size"):
        load_config(overrides=["--model.image.size=64", "--model.image.patch_size=7"])
    with pytest.raises(ConfigError, match="stem"):
        load_config(overrides=["--model.image.stem=resnet"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(overrides=["--pretrain.steps=many"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_overrides(["model.depth=3"])


def test_builtin_recipes_load():
    from omniformer.cli import RECIPES
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"quickstart", "shapes-full"} <= set(names)
    for path in RECIPES.glob("*.yaml"):
        load_config(path)


def qa(*overrides):
    """The QA task's section of a default recipe with ``overrides``, as the task reads it."""
    from omniformer.registry import get_task
    return get_task("qa").config(load_config(None, list(overrides)))


def test_curriculum_settings_are_checked():
    with pytest.raises(ConfigError, match=r"task.curriculum.steps: must be in \[0, 1,000,000,000\], got -1"):
        qa("--task.curriculum.steps=-1", "--task.curriculum.values=[shape]")
    with pytest.raises(ConfigError, match="task.curriculum.values: list the meta values"):
        qa("--task.curriculum.steps=10")
    assert qa("--task.curriculum.steps=10", "--task.curriculum.values=[shape]").curriculum.admits(
        {"meta": {"family": "shape"}})
    with pytest.raises(ConfigError, match="bucket"):
        load_config(None, ["--finetune.bucket=family"])


def test_grounding_is_checked():
    with pytest.raises(ConfigError, match=r"task.grounding: must be in \[0, 1000\], got -0.1"):
        qa("--task.grounding=-0.1")
    with pytest.raises(ConfigError, match="needs head=guided and relations=true"):
        qa("--task.grounding=0.2", "--task.head=guided")
    assert qa("--task.grounding=0.2", "--task.head=guided", "--task.relations=true").grounding == 0.2


def test_word_spotting_is_checked():
    with pytest.raises(ConfigError, match=r"task.word_spotting: must be in \[0, 1000\], got -1"):
        qa("--task.word_spotting=-1")
    with pytest.raises(ConfigError, match="spoken_question=words"):
        qa("--task.word_spotting=1.0", "--task.head=guided")
    with pytest.raises(ConfigError, match="only the transcripts"):
        qa("--task.head=guided", "--task.spoken_question=words")
    qa("--task.head=guided", "--task.spoken_question=words", "--task.spoken_fraction=0")
    assert qa("--task.word_spotting=1.0", "--task.head=guided", "--task.spoken_question=words").word_spotting == 1.0
    with pytest.raises(ConfigError, match=r"task.spotter_overhears: must be in \[0, 1\], got 1.5"):
        qa("--task.spotter_overhears=1.5")
    with pytest.raises(ConfigError, match="task.glimpses"):
        qa("--task.glimpses=0")
    with pytest.raises(ConfigError, match="unknown config key task.answer_head"):
        qa("--task.answer_head=guided")


def test_the_backbone_config_holds_architecture_only():
    from omniformer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    model = {f.name for f in dataclasses.fields(ModelConfig)}
    assert not model & {"answer_head", "spoken_question", "answer_glimpses", "answer_relations", "num_answers"}
    assert not {f.name for f in dataclasses.fields(TrainConfig)} & {"curriculum_families", "curriculum_steps"}
    assert not {f.name for f in dataclasses.fields(DataConfig)} & {"shapes", "shapes_dir"}
    assert not {f.name for f in dataclasses.fields(RunConfig)} & {"spoken_fraction", "spoken_words", "grounding"}


def test_an_older_recipe_reads_with_each_key_in_its_new_place():
    """Checkpoints and recipes written before tasks and datasets had their own sections."""
    from omniformer.config import RecipeUpgraded, run_config_from, upgrade_recipe
    old = {"model": {"answer_head": "guided", "answer_relations": True, "spoken_question": "words", "num_answers": 9},
           "data": {"shapes_dir": "data/shapes-quickstart", "shapes": {"images": 40}},
           "finetune": {"curriculum_families": ["shape"], "curriculum_steps": 900},
           "pretrain": {"curriculum_families": [], "curriculum_steps": 0},
           "objectives": {"spoken_words": 1.0}, "spoken_words": 1.0, "spoken_fraction": 0.5, "grounding": 0.2}
    new, notes = upgrade_recipe(old)
    assert new["task"] == {"head": "guided", "relations": True, "spoken_question": "words", "word_spotting": 1.0,
                           "spoken_fraction": 0.5, "grounding": 0.2,
                           "curriculum": {"key": "family", "values": ["shape"], "steps": 900}}
    assert new["data"] == {"manifest": "data/shapes-quickstart/manifest.jsonl", "dataset": "shapes",
                           "dataset_options": {"images": 40}}
    assert new["objectives"] == {"word_spotting": 1.0} and "model.answer_head is now task.head" in notes
    cfg = run_config_from(old)
    assert cfg.task["head"] == "guided" and cfg.data.dataset == "shapes"
    with pytest.warns(RecipeUpgraded, match="model.answer_head is now task.head"):
        assert load_config(None, ["--model.answer_head=guided"]).task == {"head": "guided"}


def test_speed_perturbation_range_and_audio_positions_are_checked():
    from omniformer.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="speed_perturbation"):
        load_config(None, ["--data.speed_perturbation=[1.2, 0.9]"])
    with pytest.raises(ConfigError, match="positions"):
        load_config(None, ["--model.audio.positions=relative"])
    cfg = load_config(None, ["--data.speed_perturbation=[]", "--model.audio.positions=none"])
    assert cfg.data.speed_perturbation == [] and cfg.model.audio.positions == "none"


def _config_classes():
    """Every config class of the recipe tree and of each task's section."""
    import typing
    from omniformer.config import TowerConfig
    from omniformer.tasks.asr.config import ASRConfig
    from omniformer.tasks.classify.config import ClassifyConfig
    from omniformer.tasks.qa.config import Curriculum, QAConfig
    seen, todo = [], [RunConfig, TowerConfig, QAConfig, Curriculum, ClassifyConfig, ASRConfig]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for hint in typing.get_type_hints(cls).values():
            for t in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(t):
                    todo.append(t)
    return seen


def test_every_numeric_field_of_every_config_has_a_range():
    from omniformer.config import numeric_fields
    classes = _config_classes()
    assert len(classes) >= 12
    for cls in classes:
        ranges = getattr(cls, "RANGES", {})
        assert set(numeric_fields(cls)) == set(ranges), (
            f"{cls.__name__}: numeric fields without a range: {set(numeric_fields(cls)) - set(ranges)}; "
            f"ranges of no numeric field: {set(ranges) - set(numeric_fields(cls))}")


def _outside(allowed, high: bool):
    if high:
        return None if allowed.hi is None else (allowed.hi if allowed.open in ("hi", "both") else allowed.hi * 2 + 1)
    return None if allowed.lo is None else (allowed.lo if allowed.open in ("lo", "both") else allowed.lo - 1)


def test_a_value_outside_any_range_is_named_with_the_value_and_range():
    """Each numeric field of each config, just outside either end: the error names the key,
    the value and the allowed range; the defaults, inside, all pass."""
    import re
    checked = 0
    for cls in _config_classes():
        from_dict(cls, {})  # the defaults are inside every range
        hints = __import__("typing").get_type_hints(cls)
        for name, allowed in cls.RANGES.items():
            is_list = __import__("typing").get_origin(hints[name]) is list
            for high in (False, True):
                bad = _outside(allowed, high)
                if bad is None:
                    continue
                with pytest.raises(ConfigError) as e:
                    from_dict(cls, {name: [bad] if is_list else bad})
                key = f"{name}[0]" if is_list else name
                assert re.match(rf"{re.escape(key)}: must be {re.escape(str(allowed))}, got ", str(e.value)), str(e.value)
                checked += 1
    assert checked > 80


@pytest.mark.parametrize("override, expected", [
    ("--finetune.threads=-3", r"finetune.threads: must be in [0, 1024], got -3"),
    ("--pretrain.threads=100000", r"pretrain.threads: must be in [0, 1024], got 100000"),
    ("--model.mlp_ratio=0.001", "model.mlp_ratio: 0.001 of width 96 leaves the MLP no hidden unit; must be >= 0.0104167"),
    ("--model.mlp_ratio=-1", "model.mlp_ratio: must be in (0, 64], got -1.0"),
    ("--finetune.lr=nan", "finetune.lr: must be in (0, 10], got nan"),
    ("--pretrain.seed=-1", "pretrain.seed: must be in [0, 4,294,967,295], got -1"),
    ("--pretrain.betas=0.9,1.5", "pretrain.betas[1]: must be in [0, 1), got 1.5"),
    ("--model.image.std=0.5,0,0.5", "model.image.std[1]: must be in (0, 100], got 0.0"),
    ("--model.audio.max_seconds=1e9", "model.audio.max_seconds: must be in (0, 3600], got 1000000000.0"),
    ("--task.beam=0", "task.beam: must be in [1, 256], got 0"),
])
def test_out_of_range_overrides_are_config_errors_on_the_command_line(capsys, override, expected):
    """What a user types: exit 2 and one line naming the key, the value and the range, before
    any data is made or model built (a negative thread count reached torch as a RuntimeError,
    a vanishing mlp_ratio a ZeroDivisionError)."""
    from omniformer.cli import main
    task = "asr" if override.startswith("--task.beam") else "qa"
    assert main(["train", task, override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err

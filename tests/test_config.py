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


def test_curriculum_settings_are_checked():
    with pytest.raises(ConfigError, match="curriculum_steps: must be >= 0"):
        load_config(None, ["--finetune.curriculum_steps=-1", "--finetune.curriculum_families=[shape]"])
    with pytest.raises(ConfigError, match="set curriculum_families too"):
        load_config(None, ["--finetune.curriculum_steps=10"])
    with pytest.raises(ConfigError, match="bucket"):
        load_config(None, ["--finetune.bucket=family"])


def test_grounding_is_checked():
    with pytest.raises(ConfigError, match="grounding: must be >= 0"):
        load_config(None, ["--grounding=-0.1"])
    with pytest.raises(ConfigError, match="needs model.answer_head=guided and model.answer_relations=true"):
        load_config(None, ["--grounding=0.2", "--model.answer_head=guided"])
    cfg = load_config(None, ["--grounding=0.2", "--model.answer_head=guided", "--model.answer_relations=true"])
    assert cfg.grounding == 0.2


def test_spoken_words_is_checked():
    with pytest.raises(ConfigError, match="spoken_words: must be >= 0"):
        load_config(None, ["--spoken_words=-1"])
    with pytest.raises(ConfigError, match="spoken_question=words"):
        load_config(None, ["--spoken_words=1.0", "--model.answer_head=guided"])
    with pytest.raises(ConfigError, match="only the transcripts"):
        load_config(None, ["--model.answer_head=guided", "--model.spoken_question=words"])
    load_config(None, ["--model.answer_head=guided", "--model.spoken_question=words", "--spoken_fraction=0"])
    cfg = load_config(None, ["--spoken_words=1.0", "--model.answer_head=guided", "--model.spoken_question=words"])
    assert cfg.spoken_words == 1.0
    with pytest.raises(ConfigError, match=r"spotter_overhears: must be in \[0, 1\], got 1.5"):
        load_config(None, ["--spotter_overhears=1.5"])
    with pytest.raises(ConfigError, match="answer_glimpses"):
        load_config(None, ["--model.answer_glimpses=0"])


def test_speed_perturbation_range_and_audio_positions_are_checked():
    from omniformer.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="speed_perturbation"):
        load_config(None, ["--data.speed_perturbation=[1.2, 0.9]"])
    with pytest.raises(ConfigError, match="positions"):
        load_config(None, ["--model.audio.positions=relative"])
    cfg = load_config(None, ["--data.speed_perturbation=[]", "--model.audio.positions=none"])
    assert cfg.data.speed_perturbation == [] and cfg.model.audio.positions == "none"

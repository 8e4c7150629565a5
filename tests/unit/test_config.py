"""Config validation, overrides, files and presets: bad values fail with the field's name."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cocomix.config import ConceptConfig, ModelConfig, RunConfig, TrainConfig
from cocomix.config_io import apply_overrides, load_config_file, merge_config, run_config
from cocomix.errors import ConfigError
from cocomix.presets import PRESETS, get_preset


@pytest.mark.parametrize("kwargs,field", [
    ({"flavour": "bert"}, "model.flavour"),
    ({"d_model": 30, "n_head": 4}, "model.n_head"),
    ({"vocab_size": 0}, "model.vocab_size"),
    ({"dropout": 1.0}, "model.dropout"),
])
def test_model_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="train.precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="train.log_backends"):
        TrainConfig(log_backends=("mlflow",))


@pytest.mark.parametrize("build,field", [
    (lambda: TrainConfig(min_lr_ratio=1.5), r"train\.min_lr_ratio: expected a value in \[0, 1\]"),
    (lambda: TrainConfig(grad_clip=-1.0), r"train\.grad_clip: expected a finite non-negative number"),
    (lambda: TrainConfig(keep_checkpoints=0), r"train\.keep_checkpoints: expected a positive integer"),
    (lambda: TrainConfig(beta2=1.0), r"train\.beta2: expected a value in \[0, 1\)"),  # AdamW divides by 1 - beta2
    (lambda: ConceptConfig(n_latents=8, mix_k=9, k_attr=4), r"concept\.mix_k: expected at most n_latents=8"),
    (lambda: ConceptConfig(n_latents=8, mix_k=8, k_attr=9), r"concept\.k_attr: expected at most n_latents=8"),
    (lambda: RunConfig(method="cocomix", model=ModelConfig(n_layer=4), concept=ConceptConfig(concept_layer=0)),
     r"concept\.concept_layer: expected a block index in \[1, 3\]"),
    (lambda: RunConfig(method="cocomix", model=ModelConfig(n_layer=4), concept=ConceptConfig(concept_layer=4)),
     r"concept\.concept_layer: expected a block index in \[1, 3\]"),
])
def test_out_of_range_settings_are_refused_by_name(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build()


@pytest.mark.parametrize("build,field", [
    (lambda: TrainConfig(steps=True), r"train\.steps: expected a positive integer, got True"),
    (lambda: ModelConfig(n_head=True, d_model=8), r"model\.n_head: expected a positive integer"),
    (lambda: TrainConfig(lr=float("inf")), r"train\.lr: expected a finite positive number"),
    (lambda: TrainConfig(weight_decay=float("inf")), r"train\.weight_decay: expected a finite non-negative"),
    (lambda: ModelConfig(norm_eps=float("inf")), r"model\.norm_eps: expected a finite positive number"),
    (lambda: TrainConfig(lr="1e-3"), r"train\.lr: expected a finite positive number, got '1e-3'"),
    (lambda: TrainConfig(lr=10**400), r"train\.lr: expected a finite positive number, got 1000"),  # (no float)
    (lambda: TrainConfig(lr=2**1024 - 1), r"train\.lr: expected a finite positive number"),  # rounds up to 2**1024
    (lambda: ModelConfig(dropout=None), r"model\.dropout: expected a value in \[0, 1\), got None"),
    (lambda: TrainConfig(device=None), r"train\.device: expected auto, cpu, cuda or cuda:N, got None"),
    (lambda: TrainConfig(device="cudax"), r"train\.device"),
    (lambda: TrainConfig(device="cuda:01"), r"train\.device"),
    (lambda: TrainConfig(log_backends="tensorboard"), r"train\.log_backends: expected a list of backends"),
    (lambda: ConceptConfig(lambda_concept=True), r"concept\.lambda_concept: expected a finite number >= 0"),
    (lambda: TrainConfig(compile="false"), r"train\.compile: expected true or false, got 'false'"),  # (truthy)
    (lambda: ModelConfig(bias=0), r"model\.bias: expected true, false or null"),
    (lambda: ConceptConfig(mask_last_position=None), r"concept\.mask_last_position: expected true or false"),
    # a Path is no JSON (config.json could not be written after the teacher loaded), None no path
    (lambda: ConceptConfig(teacher=Path("runs/demo/teacher")), r"concept\.teacher: expected a string .*PosixPath"),
    (lambda: ConceptConfig(cache=Path("cache")), r"concept\.cache: expected a string"),
    (lambda: ConceptConfig(sae=None), r"concept\.sae: expected a string \(a path or hub name; '' for none\), got None"),
    (lambda: RunConfig(model={"n_layer": 2}), r"^model: expected a ModelConfig, got 'dict'$"),
    (lambda: RunConfig(train={}), r"^train: expected a TrainConfig, got 'dict'$"),
])
def test_the_library_api_refuses_what_the_command_line_does(build: Callable[[], object], field: str) -> None:
    """The dataclasses themselves, not only `--set`'s parsing: a bool is no integer, infinity no learning rate,
    a string no number — each a ConfigError naming the field, not a TypeError later."""
    with pytest.raises(ConfigError, match=field):
        build()
    assert TrainConfig(device="cuda:1").device == "cuda:1"
    listed = RunConfig(train=TrainConfig(log_backends=["tensorboard"]))  # a list from Python code: kept as a tuple
    assert hash(listed) and run_config(json.loads(listed.to_json())) == listed


def test_the_boundaries_of_those_ranges_are_accepted() -> None:
    t = TrainConfig(min_lr_ratio=1.0, grad_clip=0.0, keep_checkpoints=1, beta2=0.0)
    assert (t.min_lr_ratio, t.grad_clip, t.keep_checkpoints, t.beta2) == (1.0, 0.0, 1, 0.0)
    c = ConceptConfig(n_latents=8, mix_k=8, k_attr=8)
    assert (c.mix_k, c.k_attr) == (8, 8)
    for layer in (1, 3):
        run = RunConfig(method="cocomix", model=ModelConfig(n_layer=4), concept=ConceptConfig(concept_layer=layer))
        assert run.concept.concept_layer == layer


def test_the_default_warm_up_is_the_nearest_integer_to_a_300th_of_the_steps() -> None:
    """round(steps / 300), as documented: 20000 / 300 = 66.67 -> 67 (truncating would give 66). The official
    configs set their warm-ups explicitly (130 / 65 steps, the presets' values), so this is only the default."""
    assert [TrainConfig(steps=s).warmup for s in (20_000, 20_100, 149, 1)] == [67, 67, 0, 0]
    assert TrainConfig(steps=451).warmup == 2 and TrainConfig(steps=20_000, warmup_steps=5).warmup == 5


def test_round_trip_through_json() -> None:
    for name in PRESETS:
        cfg = get_preset(name)
        assert run_config(json.loads(cfg.to_json())) == cfg


def test_unknown_and_ill_typed_fields_are_named() -> None:
    base = RunConfig().to_dict()
    with pytest.raises(ConfigError, match=r"train\.lr_max: unknown field"):
        run_config(apply_overrides(base, ["train.lr_max=1"]))
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer"):
        run_config(apply_overrides(base, ["train.steps=1.5"]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(base, ["train.steps"])
    with pytest.raises(ConfigError, match="method"):
        run_config({**base, "method": "magic"})
    with pytest.raises(ConfigError, match="data.seq_len"):
        run_config(apply_overrides(base, ["data.seq_len=4096"]))


def test_a_section_set_as_a_json_object_is_merged_as_a_config_file_is() -> None:
    """`--set 'model={"n_layer": 2}'` changes n_layer only, as a config file holding that section would; the
    preset's other model fields (d_model, vocab_size) stay."""
    base = get_preset("tiny").to_dict()
    cfg = run_config(apply_overrides(base, ['model={"n_layer": 2}']))
    assert cfg.model == dataclasses.replace(get_preset("tiny").model, n_layer=2)
    assert cfg.model == run_config(merge_config(base, {"model": {"n_layer": 2}})).model
    with pytest.raises(ConfigError, match=r"model\.nope: unknown field"):
        run_config(apply_overrides(base, ['model={"nope": 1}']))


def test_an_override_into_a_section_that_is_not_a_mapping_is_an_error_not_the_defaults() -> None:
    """A config whose `model` is a string: `--set model.n_layer=2` names the wrong value (as loading the file
    without the override does) instead of putting GPT-2 124M's defaults, or losing a preset's section, in its
    place; a section the file leaves out (or sets to null) takes the defaults with the override."""
    base = {**get_preset("tiny").to_dict(), "model": "llama"}
    with pytest.raises(ConfigError, match=r"^model: expected a mapping, got 'llama'$"):
        apply_overrides(base, ["model.n_layer=2"])
    with pytest.raises(ConfigError, match=r"^model: expected a mapping"):
        run_config(base)
    for model in (None, "absent"):
        loose = {k: v for k, v in base.items() if k != "model"} | ({} if model == "absent" else {"model": None})
        assert run_config(apply_overrides(loose, ["model.n_layer=2"])).model.n_layer == 2


def test_fsdp_param_dtype_needs_fsdp() -> None:
    base = RunConfig().to_dict()
    cfg = run_config(apply_overrides(base, ["train.parallel=fsdp", "train.fsdp_param_dtype=bfloat16"]))
    assert cfg.train.fsdp_param_dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"train\.fsdp_param_dtype: expected float32 unless train\.parallel is fsdp"):
        run_config(apply_overrides(base, ["train.fsdp_param_dtype=bfloat16"]))
    with pytest.raises(ConfigError, match=r"train\.fsdp_param_dtype: expected float32 or bfloat16"):
        run_config(apply_overrides(base, ["train.parallel=fsdp", "train.fsdp_param_dtype=float16"]))


def test_overrides_take_numbers_as_python_writes_them() -> None:
    sets = ["train.lr=.1", "train.min_lr_ratio=1.e-1", "train.steps=+30", "data.path=./store"]
    cfg = run_config(apply_overrides(RunConfig().to_dict(), sets))
    assert (cfg.train.lr, cfg.train.min_lr_ratio, cfg.train.steps, cfg.data.path) == (0.1, 0.1, 30, "./store")
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer"):
        run_config(apply_overrides(RunConfig().to_dict(), ["train.steps=30."]))


@pytest.mark.parametrize("override,message", [
    ("train.steps=true", r"train\.steps: expected an integer, got True"),  # JSON true is not 1
    ("train.warmup_steps=false", r"train\.warmup_steps: expected an integer or null, got False"),
    ("train.lr=true", r"train\.lr: expected a finite number, got True"),
    ("train.steps=01", r"train\.steps: expected an integer, got '01'"),  # JSON and Python refuse 01; C reads 8
    ("train.max_bad_steps=-010", r"train\.max_bad_steps: expected an integer, got '-010'"),
])
def test_a_boolean_or_a_zero_padded_integer_is_not_taken_as_a_number(override: str, message: str) -> None:
    """`--set train.steps=true` or `=01` is a mistake, not 1: a one-line error naming the field."""
    with pytest.raises(ConfigError, match=f"^{message}$") as e:
        run_config(apply_overrides(RunConfig().to_dict(), [override]))
    assert "\n" not in str(e.value)


def test_overrides_parse_json_values() -> None:
    cfg = run_config(apply_overrides(RunConfig().to_dict(),
                                     ["train.lr=3e-4", "model.flavour=llama", "train.log_backends=[]",
                                      "train.warmup_steps=null"]))
    assert cfg.train.lr == 3e-4 and cfg.model.flavour == "llama" and cfg.train.warmup_steps is None


def test_the_reconstruction_gradient_needs_the_per_position_loss() -> None:
    base = RunConfig().to_dict()
    with pytest.raises(ConfigError, match="concept.gradient_at: expected 'residual' unless attribution_loss=next"):
        run_config(apply_overrides(base, ["concept.gradient_at=reconstruction"]))
    cfg = run_config(apply_overrides(base, ["concept.gradient_at=reconstruction",
                                            "concept.attribution_loss=next_token"]))
    assert cfg.concept.gradient_at == "reconstruction"
    with pytest.raises(ConfigError, match="concept.selection: expected 'attribution' with multiplier"):
        run_config(apply_overrides(base, ["concept.selection=activation", "concept.multiplier=pre_activation"]))
    # activation selection has no all-zero final row for mask_last_position=false to train towards: CoCoMix
    # training refuses it before any work, while a stored run of that config still opens (eval, export)
    from cocomix.methods import CoCoMix

    odd = run_config(apply_overrides(base, ["method=cocomix", "concept.selection=activation",
                                            "concept.mask_last_position=false"]))
    with pytest.raises(ConfigError, match="concept.mask_last_position: expected true with selection=activation"):
        CoCoMix(odd).prepare(torch.device("cpu"), None)
    assert not run_config(apply_overrides(base, ["concept.mask_last_position=false"])).concept.mask_last_position


def test_bad_override_values_are_config_errors_that_say_how_to_spell_them() -> None:
    base = RunConfig().to_dict()
    for sets, message in ((["train.lr=1" + "0" * 400], r"train\.lr: expected a finite number, got 1000.*\.\.\.$"),
                          (["train.lr=" + "1" * 5000], r"train\.lr: expected a finite number"),
                          (["train.warmup_steps=None"], r"train\.warmup_steps: expected an integer or null"),
                          (["train.steps=" + "9" * 500], r"train\.steps: expected an integer of magnitude"),
                          (["model.d_model=4" + "0" * 499], r"model\.d_model: expected an integer of magn"),
                          (["train.log_backends=tensorboard"], r'train\.log_backends: expected a list, e\.g\. \["a"')):
        with pytest.raises(ConfigError, match=message):
            run_config(apply_overrides(base, sets))


def test_overrides_reach_sections_a_file_leaves_out_and_keep_strings_as_text() -> None:
    partial = {"method": "ntp", "data": {"path": "x"}}  # a valid file: train and model take their defaults
    cfg = run_config(apply_overrides(partial, ["train.lr=1e-3", "data.path=2024", "concept.teacher=true",
                                               "train.device= cpu", 'data.path="quoted"']))
    assert cfg.train.lr == 1e-3 and cfg.data.path == "quoted" and cfg.concept.teacher == "true"
    assert cfg.train.device == "cpu"
    assert run_config(apply_overrides(partial, ["data.path=2024"])).data.path == "2024"
    with pytest.raises(ConfigError, match=r"unknown config section 'trian' \(known: concept, data, model, train\)"):
        apply_overrides(partial, ["trian.lr=1"])
    with pytest.raises(ConfigError, match=r"^model\.n_layer\.x: model\.n_layer is a field, not a section \(expected "
                                          r"model\.n_layer=VALUE\)$"):
        apply_overrides(partial, ["model.n_layer.x=1"])
    with pytest.raises(ConfigError, match=r"train\.seed: expected an integer below 2\*\*64"):
        run_config(apply_overrides(partial, [f"train.seed={2**64}"]))


def test_config_files(tmp_path) -> None:
    (tmp_path / "d.toml").write_text('method = "ntp"\n[train]\nseed = 1979-05-27\n')
    with pytest.raises(ConfigError, match=r"d.toml: train.seed: expected a string, number, boolean or list, got "
                                          r"a date \(1979-05-27\)"):
        load_config_file(tmp_path / "d.toml")
    (tmp_path / "a.toml").write_text('method = "ntp"\n[train]\nsteps = 7\n')
    assert run_config(load_config_file(tmp_path / "a.toml")).train.steps == 7
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ConfigError, match="b.json: not valid JSON"):
        load_config_file(tmp_path / "b.json")
    (tmp_path / "twice.json").write_text('{"train": {"steps": 2}, "train": {"lr": 1e-3}}')  # steps=2 would vanish
    with pytest.raises(ConfigError, match=r"twice.json: not valid JSON \(the key 'train' appears twice in one "
                                          r"object"):
        load_config_file(tmp_path / "twice.json")
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="c.json: expected a mapping"):
        load_config_file(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.json")
    # a run directory gives the config it trained with; a directory without one is named as such
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="run: a directory without config.json"):
        load_config_file(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps(get_preset("tiny-cocomix").to_dict()))
    assert run_config(load_config_file(tmp_path / "run")) == get_preset("tiny-cocomix")
    (tmp_path / "hf").mkdir()  # an exported model: its config.json is transformers'
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="hf: holds a model folder, not a run"):
        load_config_file(tmp_path / "hf")
    from tests.cli import run_cli

    r = run_cli("train", "--resume", "--out", str(tmp_path / "hf"), "--print-config")  # ... nor one to resume
    assert r.returncode == 2 and "holds a model folder, not a run, so there is nothing to --resume" in r.stderr
    (tmp_path / "deep").mkdir()  # nesting deeper than the JSON parser recurses: a one-line error too
    (tmp_path / "deep" / "config.json").write_text("[" * 100_000)
    r = run_cli("train", "--resume", "--out", str(tmp_path / "deep"), "--print-config")
    assert r.returncode == 2 and "config.json: not valid JSON (JSON nested too deeply" in r.stderr, r.stderr


def test_cached_targets_need_fixed_windows() -> None:
    base = get_preset("gpt2-69m-cocomix").to_dict()
    with pytest.raises(ConfigError, match=r"data\.window_offset: expected 'fixed' with concept\.cache"):
        run_config(apply_overrides(base, ["concept.cache=targets"]))
    cfg = run_config(apply_overrides(base, ["concept.cache=targets", "data.window_offset=fixed"]))
    assert cfg.data.window_offset == "fixed" and get_preset("tiny-cocomix").data.window_offset == "fixed"
    with pytest.raises(ConfigError, match=r"data\.window_offset"):
        run_config(apply_overrides(base, ["data.window_offset=shifted"]))


def test_warmup_defaults_to_a_three_hundredth_of_the_steps() -> None:
    # the paper presets' values are checked one by one in test_presets.py; here the rule behind their warm-up
    # (official configs: warm-up ~1/300 of the steps) as the config applies it to any run
    assert TrainConfig(steps=40_000).warmup == 133


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="preset: unknown preset .gpt5."):
        get_preset("gpt5")


def test_a_cache_a_cocomix_run_would_never_open_is_refused() -> None:
    base = get_preset("tiny-cocomix").to_dict()
    for unused in (["concept.target=hidden"], ["concept.lambda_concept=0"]):
        with pytest.raises(ConfigError, match="concept.cache: expected empty with concept.target=hidden"):
            run_config(apply_overrides(base, ["concept.cache=targets", *unused]))
        run_config(apply_overrides(base, unused))  # without a cache: fine
    # other methods ignore the concept section (the demo's NTP baseline is its CoCoMix config with method=ntp),
    # also with random windows
    ntp = run_config(apply_overrides(base, ["method=ntp", "concept.cache=targets", "data.window_offset=random"]))
    assert ntp.concept.cache == "targets"


def test_log_backends_are_given_at_most_once() -> None:
    base = get_preset("tiny").to_dict()
    with pytest.raises(ConfigError, match="train.log_backends: expected each backend at most once"):
        run_config(apply_overrides(base, ['train.log_backends=["tensorboard","tensorboard"]']))
    assert run_config(apply_overrides(base, ['train.log_backends=["tensorboard"]'])).train.log_backends == (
        "tensorboard",)


def test_a_config_file_on_top_of_a_preset_and_a_partial_file_said(tmp_path: Path) -> None:
    from tests.cli import run_cli

    (tmp_path / "part.json").write_text('{"train": {"steps": 5}, "model": {"n_layer": 2}}')
    r = run_cli("train", "--preset", "tiny", "--config", str(tmp_path / "part.json"), "--set", "train.lr=0.002",
                "--print-config")
    printed = json.loads(r.stdout)
    tiny = get_preset("tiny").to_dict()
    assert r.returncode == 0 and r.stderr == ""
    assert (printed["train"]["steps"], printed["model"]["n_layer"], printed["train"]["lr"]) == (5, 2, 0.002)
    assert printed["model"]["d_model"] == tiny["model"]["d_model"] and printed["data"] == tiny["data"]
    r = run_cli("train", "--config", str(tmp_path / "part.json"), "--print-config")
    assert r.returncode == 0 and json.loads(r.stdout)["model"]["d_model"] == 768
    assert r.stderr.startswith(f"cocomix: warning: --config {tmp_path / 'part.json'} leaves out method, data: those "
                               "fields take RunConfig's defaults (method: ntp, the baseline)") and \
        r.stderr.count("\n") == 1
    # concept settings on the command line of an NTP run change nothing: said; on a CoCoMix run, nothing said
    r = run_cli("train", "--preset", "tiny", "--set", "concept.cache=targets", "--print-config")
    assert r.returncode == 0 and r.stderr == ("cocomix: warning: --set concept.cache: method ntp does not read this "
                                              "setting, so it changes nothing; set method=cocomix (or use a "
                                              "*-cocomix preset) to train with concepts\n")
    r = run_cli("train", "--preset", "tiny-pause", "--set", "concept.cache=targets", "--set",
                "concept.concept_layer=1", "--print-config")  # pause reads its slot's layer, not the cache
    assert r.returncode == 0 and "--set concept.cache: method pause does not read" in r.stderr
    r = run_cli("train", "--preset", "tiny-kd", "--set", "concept.cache=targets", "--set", "concept.lambda_kd=0.2",
                "--print-config")  # KD reads its teacher and λ_KD, not the concept targets' settings
    assert r.returncode == 0 and r.stderr.startswith("cocomix: warning: --set concept.cache: method kd does not read")
    r = run_cli("train", "--preset", "tiny-cocomix", "--set", "concept.lambda_concept=0.2", "--print-config")
    assert r.returncode == 0 and r.stderr == ""


def test_a_null_section_in_a_file_is_one_it_leaves_out_with_or_without_overrides() -> None:
    """`"train": null` over a preset (a YAML-to-JSON converter writes an empty `train:` so) was an error alone and,
    with a `--set`, silently became the defaults in place of the preset's section: now the preset's section stays
    either way, and a file alone takes the defaults for it, as for a section it leaves out."""
    preset = get_preset("gpt2-69m-cocomix")
    base = merge_config(preset.to_dict(), {"train": None, "model": {"dropout": 0.0}})
    assert run_config(base).train == preset.train and run_config(base).model.dropout == 0.0
    assert run_config(apply_overrides(base, ["train.lr=3e-4"])).train == dataclasses.replace(preset.train, lr=3e-4)
    with pytest.raises(ConfigError, match=r"^--set 'train=null': train is a section; set its fields"):
        apply_overrides(preset.to_dict(), ["train=null"])  # (it put the defaults in place of the preset's)
    alone = {**preset.to_dict(), "concept": None}
    assert run_config(alone).concept == ConceptConfig() == run_config({k: v for k, v in alone.items()
                                                                        if k != "concept"}).concept

"""Config readers: native / seed / taming formats, JSON with comments, every ConfigError case, warnings, round trip."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import yaml

from vqforge.config import Config, dump_yaml, load_config, parse_config
from vqforge.config.effects import ConfigWarning, ineffective_settings
from vqforge.config.jsonc import loads_jsonc
from vqforge.config.readers import (detect_format, load_config_with_warnings, parse_config_with_warnings, read_raw)
from vqforge.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
SEED_EXAMPLES = sorted(EXAMPLES.glob("seed_*.json"))
USER_LOSS = "models.taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"


def seed(**over) -> dict:
    """A small valid seed-format config (taming EMAVQ); keyword arguments replace top-level sections."""
    raw = {
        "model_type": "TamingVQGAN",
        "model_args": {
            "model_variant": "EMAVQ", "n_embed": 64, "embed_dim": 8,
            "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                         "resolution": 32, "z_channels": 8},
            "lossconfig": {"target": USER_LOSS, "params": {"disc_start": 100, "disc_weight": 0.8}},
        },
        "train_args": {"num_steps": 10, "lr": 1e-4, "use_gan": True},
        "data_args": {"batch_size": 2, "training_data_files": ["imgs/"]},
    }
    raw.update(over)
    return raw


def taming(**params_over) -> dict:
    params = {
        "embed_dim": 8, "n_embed": 64,
        "ddconfig": {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0},
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 50,
                                  "disc_weight": 0.8, "codebook_weight": 1.0}},
    }
    params.update(params_over)
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel", "params": params},
            "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 3}}}


def native(**over) -> dict:
    raw = {"model": {"ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                  "resolution": 32}},
           "data": {"train": ["imgs/"], "resolution": 32}}
    raw.update(over)
    return raw


def error_of(raw, overrides=(), fmt="auto") -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_config(raw, overrides, fmt)
    return ei.value


# ------------------------------------------------------------------------------------------------ examples & formats

@pytest.mark.parametrize("path", SEED_EXAMPLES, ids=lambda p: p.name)
def test_seed_examples_load(path):
    text = path.read_text()
    assert "//" in text and "/*" in text  # the examples really use comments
    cfg, lines = load_config_with_warnings(path)
    assert cfg._format == "seed"
    raw = read_raw(path)
    assert cfg.model.family == ("vqvae2" if raw["model_type"] == "vqvae2" else "taming")
    assert cfg.train.num_steps == raw["train_args"]["num_steps"]
    assert cfg.data.batch_size == raw["data_args"]["batch_size"]
    assert cfg.train.disc_update_every == 3  # the seed format's discriminator cadence
    assert all(isinstance(line, str) for line in lines)


def test_seed_example_taming_values():
    cfg = load_config_with_warnings(EXAMPLES / "seed_taming_emavq.json")[0]
    assert (cfg.model.variant, cfg.model.n_embed, cfg.model.embed_dim) == ("EMAVQ", 512, 64)
    assert cfg.model.ddconfig.ch_mult == [1, 2, 2] and cfg.model.ddconfig.resolution == 64
    assert cfg.loss.use_gan is True and cfg.loss.disc_start == 10000 and cfg.loss.disc_weight == 0.8
    assert cfg.loss.disc_num_layers == 2 and cfg.loss.disc_ndf == 32
    assert cfg.train.lr_schedule == "exponential" and cfg.train.lr_decay == 0.98 and cfg.train.lr_decay_every == 1000
    assert cfg.train.disc_lr_schedule == "constant"  # the discriminator's lr does not decay
    assert cfg.train.lr == 4.5e-6 and cfg.train.disc_lr is None and cfg.train.betas == [0.5, 0.9]
    # run directory = folder_name + "_" + the config file's stem (issue 10: checkpoint_path is a resume file now)
    assert cfg.train.out_dir == "runs/seed_seed_taming_emavq" and cfg.train.resume_from is None
    assert cfg.train.seed == 1234
    assert cfg.data.num_workers == 2 and cfg.data.use_images is True
    assert cfg.data.train == ["data/train"] and cfg.data.val == ["data/val"]  # data_process folders
    assert (cfg.data.resolution, cfg.data.resize, cfg.data.random_crop, cfg.data.hflip) == (64, None, False, False)
    assert cfg.log.project == "vqforge-seed" and cfg.log.wandb is False


def test_seed_example_vqvae2_values():
    cfg = load_config_with_warnings(EXAMPLES / "seed_vqvae2.json")[0]
    v = cfg.model.vqvae2
    assert cfg.model.variant is None
    assert (v.hidden_channels, v.res_channels, v.embed_dim, v.nb_entries, v.scaling_rates) == (64, 32, 32, 256, [4, 2])
    assert cfg.data.resolution == 256 and cfg.data.random_crop is False  # whole frames at 256, as before
    assert cfg.train.lr == 3e-4 and cfg.train.betas == [0.9, 0.999]
    # without a GAN the previous system trained VQ-VAE-2 on MSE + VQ loss
    assert (cfg.loss.use_gan, cfg.loss.pixel_loss, cfg.loss.perceptual_weight) == (False, "l2", 0.0)


def test_taming_and_native_examples_load():
    cfg, lines = load_config_with_warnings(EXAMPLES / "taming_vqgan.yaml", ["data.train=[imgs/]"])
    assert cfg._format == "taming" and cfg.model.variant == "VQModel"
    assert cfg.train.base_learning_rate == 4.5e-6 and cfg.data.batch_size == 4 and cfg.train.num_steps == 20000
    assert cfg.loss.use_gan is True and cfg.data.resolution == 64 and cfg.data.num_workers == 2
    assert any("CustomTrain" in line for line in lines)
    cfg = load_config(EXAMPLES / "native_emavq.yaml")
    assert cfg._format == "native" and cfg.model.variant == "EMAVQ" and cfg.data.resize == 72


def test_detect_format():
    assert detect_format(seed()) == "seed"
    assert detect_format(taming()) == "taming"
    assert detect_format(native()) == "native"
    assert detect_format({"lightning": {}, "model": {"target": "x"}}) == "taming"


@pytest.mark.parametrize("raw, words", [
    ({"model_type": "vqvae2", "train_args": {}, "loss": {"use_gan": True}}, ["seed format (model_type, train_args)", "native format (loss)"]),
    ({"model": {"target": "taming.models.vqgan.VQModel", "n_embed": 4}}, ["taming format (model.target)", "native format (model.n_embed)"]),
    ({"hello": 1}, ["none of its keys", "model_type", "model.target"]),
    ({"model_typ": "vqvae2"}, ["did you mean 'model_type'"]),
])
def test_ambiguous_or_unknown_format(raw, words):
    msg = str(error_of(raw))
    for w in words:
        assert w in msg


# -------------------------------------------------------------------------------------------------------- JSON/YAML

def test_jsonc_comments_and_trailing_commas():
    text = '{\n  "a": "http://x /* not a comment */", // real comment\n  /* block\n  comment */ "b": [1, 2,],\n}\n'
    assert loads_jsonc(text) == {"a": "http://x /* not a comment */", "b": [1, 2]}
    assert loads_jsonc('{"q": "a \\" // b"}') == {"q": 'a " // b'}


@pytest.mark.parametrize("text, line, col", [
    ('{\n  "a": 1,\n  "b": ,\n}', 3, 8),
    ('{\n  // comment\n  "a": 1\n  "b": 2\n}', 4, 3),
    ('{"a": 1, /* x\n\n */ "b" 2}', 3, 9),
])
def test_json_syntax_error_line_and_column(tmp_path, text, line, col):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert f"line {line}, column {col}" in str(ei.value) and "bad.json" in str(ei.value)


def test_yaml_syntax_error_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  n_embed: 4\n   embed_dim: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "YAML syntax error at line 3, column" in str(ei.value)


@pytest.mark.parametrize("name, text, word", [
    ("dup.json", '{"model_type": "vqvae2", "model_type": "TamingVQGAN"}', "appears twice"),
    ("dup.yaml", "model:\n  n_embed: 4\n  n_embed: 8\n", "line 3, column 3"),
    ("list.yaml", "- 1\n- 2\n", "must be a mapping"),
    ("x.toml", "a = 1", "use .json, .jsonc, .yaml or .yml"),
    ("nan.json", '{"train": {"lr": NaN}}', "NaN"),
])
def test_file_level_errors(tmp_path, name, text, word):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert word in str(ei.value)


def test_missing_file_and_extensions(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    for suffix in (".json", ".jsonc", ".yaml", ".yml"):
        p = tmp_path / f"c{suffix}"
        p.write_text(json.dumps(native()))  # JSON is valid YAML too
        assert load_config(p).model.ddconfig.ch == 32


# ------------------------------------------------------------------------------------------------------ seed mapping

def test_seed_mapping_details():
    raw = seed()
    raw["model_args"]["ckpt_path"] = "old.ckpt"
    raw["model_args"]["lossconfig"]["params"].update(use_actnorm=True, disc_loss="vanilla", perceptual_weight=0.5)
    raw["train_args"].update(beta1=0.1, checkpoint_path="old/checkpoint.pth.tar", folder_name="out", grad_clip=1.0,
                             precision="bf16", ema_decay=0.999, save_interval=7, validation_interval=9,
                             grad_accum_steps=2)
    raw["data_args"].update(num_threads=3, sequence_length=4, seed=11, validation_data_files="v/")
    raw.update(use_wandb=True, project_name="p")
    cfg = parse_config(raw)
    assert cfg.model.init_from == "old.ckpt"
    assert cfg.loss.disc_norm == "act" and cfg.loss.disc_loss == "vanilla" and cfg.loss.perceptual_weight == 0.5
    assert cfg.train.betas == [0.1, 0.9] and cfg.train.disc_betas == [0.5, 0.9] and cfg.train.disc_lr is None
    assert cfg.train.resume_from == "old/checkpoint.pth.tar"  # checkpoint_path resumes (issue 10)
    assert (cfg.train.out_dir, cfg.train.grad_clip, cfg.train.precision, cfg.train.ema_decay) == ("out", 1.0, "bf16", 0.999)
    assert (cfg.train.device, cfg.train.save_interval, cfg.train.validation_interval) == ("auto", 7, 9)
    assert cfg.train.grad_accum_steps == 2 and cfg.train.seed == 11
    assert (cfg.data.num_workers, cfg.data.sequence_length, cfg.data.val) == (3, 4, ["v/"])
    assert cfg.data.train == ["imgs/"] and cfg.data.resolution == 32  # resolution from ddconfig when not given
    assert cfg.log.wandb is True and cfg.log.project == "p"
    assert cfg.train.lr_schedule == "exponential" and cfg.train.lr_decay == 0.99  # the previous system's default
    assert {"loss.disc_start", "train.betas", "model.ddconfig.ch", "data.val", "log.project"} <= cfg._explicit
    assert "train.disc_update_every" not in cfg._explicit  # a format default, not the user's choice


@pytest.mark.parametrize("alias, family", [("TamingVQGAN", "taming"), ("taming_vqgan", "taming"), ("VQGAN", "taming"),
                                           ("vqgan", "taming"), ("EMAVQ", "taming"), ("emavq", "taming"),
                                           ("VQVAE2", "vqvae2"), ("vqvae2", "vqvae2")])
def test_model_type_aliases(alias, family):
    raw = seed(model_type=alias)
    raw["model_args"].pop("model_variant")
    if family == "vqvae2":
        raw["model_args"].pop("ddconfig")
        raw["model_args"].pop("n_embed")
    cfg = parse_config(raw)
    assert cfg.model.family == family
    expected = None if family == "vqvae2" else ("EMAVQ" if alias.lower() == "emavq" else "VQModel")
    assert cfg.model.variant == expected
    if family == "taming":  # model_type EMAVQ with the same model_variant is not a conflict
        raw["model_args"]["model_variant"] = expected
        assert parse_config(raw).model.variant == expected


def test_the_users_mismatch_vqvae2_with_emavq():
    raw = seed(model_type="vqvae2", train_args={"use_gan": False})
    e = error_of(raw)
    assert e.path == "model_args.model_variant"
    assert "'EMAVQ' is a taming variant" in e.problem
    assert "model_type 'vqvae2' selects the VQ-VAE-2 family" in e.problem
    assert '"model_type": "TamingVQGAN"' in e.fix
    assert "remove model_variant" in e.fix
    # the fix works: the corrected file loads, and the unused GAN settings are reported
    raw["model_type"] = "TamingVQGAN"
    cfg, lines = parse_config_with_warnings(raw)
    assert cfg.model.variant == "EMAVQ" and cfg.loss.use_gan is False
    assert any(l.startswith("loss.disc_weight (from model_args.lossconfig.params.disc_weight)") for l in lines)
    assert any(l.startswith("loss.disc_start ") for l in lines)


def test_use_gan_defaults_to_true():
    # the previous system's default (issue 10: formerly it followed lossconfig)
    raw = seed()
    del raw["train_args"]["use_gan"]
    assert parse_config(raw).loss.use_gan is True
    del raw["model_args"]["lossconfig"]
    cfg = parse_config(raw)  # without a lossconfig: the loss that system built then
    assert cfg.loss.use_gan is True and (cfg.loss.disc_start, cfg.loss.disc_weight) == (10000, 0.8)


def test_vqvae2_old_names_and_top_level_rates():
    raw = {"model_type": "vqvae2", "data_args": {"training_data_files": "imgs"}, "train_args": {"use_gan": False},
           "model_args": {"input_channels": 1, "vocab_size": 128, "n_init": 16, "n_hid": 32, "nb_levels": 3},
           "scaling_rates": [2, 2, 2]}
    cfg = parse_config(raw)
    v = cfg.model.vqvae2
    assert (v.in_channels, v.nb_entries, v.embed_dim, v.hidden_channels, v.scaling_rates) == (1, 128, 16, 32, [2, 2, 2])
    assert cfg.data.train == ["imgs"]
    # same value under the old and the new name is fine
    raw["model_args"]["nb_entries"] = 128
    assert parse_config(raw).model.vqvae2.nb_entries == 128
    # nb_levels follows len(scaling_rates) when only the rates are given
    raw["model_args"].pop("nb_levels")
    assert parse_config(raw).model.vqvae2.nb_levels == 3


def test_data_process_folders_replace_the_lists():
    # issue 10: data_process.train / .vaild are folders (formerly crop settings); crops are reached with --set
    raw = seed(data_process={"train": "clips/train", "vaild": "clips/val"})
    raw["data_args"]["validation_data_files"] = ["a.mp4"]
    cfg, lines = parse_config_with_warnings(raw, ["data.random_crop=true", "data.hflip=true", "data.resize=40"])
    assert cfg.data.train == ["clips/train"] and cfg.data.val == ["clips/val"]
    assert (cfg.data.resize, cfg.data.random_crop, cfg.data.hflip) == (40, True, True)
    assert any(l.startswith("data_args.training_data_files = ['imgs/']: ignored") for l in lines)
    e = error_of(seed(data_process={"valid": "clips/val"}))
    assert e.path == "data_process" and "did you mean 'vaild'" in e.fix


# --------------------------------------------------------------------------------------------------- taming mapping

def test_taming_mapping():
    raw = taming(ckpt_path="m.ckpt", image_key="image", monitor="val/rec_loss", sane_index_shape=True)
    raw["data"]["params"].update(train={"target": "taming.data.custom.CustomTrain",
                                        "params": {"training_images_list_file": "t.txt", "size": 32}})
    raw["lightning"] = {"trainer": {"max_steps": 77, "gpus": "0,"}, "callbacks": {}}
    cfg, lines = parse_config_with_warnings(raw, ["data.train=[imgs/]"])
    assert cfg._format == "taming" and cfg.model.family == "taming" and cfg.model.variant == "VQModel"
    assert (cfg.model.n_embed, cfg.model.embed_dim, cfg.model.init_from) == (64, 8, "m.ckpt")
    assert cfg.train.base_learning_rate == 4.5e-6 and cfg.data.batch_size == 3 and cfg.train.num_steps == 77
    assert cfg.loss.use_gan is True and cfg.loss.disc_start == 50 and cfg.train.disc_update_every == 1
    text = "\n".join(lines)
    for word in ("lightning: ignored", "lightning.trainer.gpus", "lightning.callbacks", "model.params.image_key",
                 "model.params.monitor", "model.params.sane_index_shape", "CustomTrain"):
        assert word in text


def test_taming_gumbel_and_emavq():
    raw = taming(temperature_scheduler_config={
        "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
        "params": {"warm_up_steps": 0, "max_decay_steps": 1000, "lr_start": 0.9, "lr_max": 0.9, "lr_min": 1e-6}})
    raw["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    q = parse_config(raw, ["data.train=[x]"]).model.quantizer
    assert (q.temperature_start, q.temperature_end, q.temperature_anneal_steps, q.temperature_schedule) == (0.9, 1e-6, 1000, "cosine")
    assert q.kl_weight == 1e-8  # taming GumbelVQ's default
    raw["model"]["params"]["kl_weight"] = 5e-4
    assert parse_config(raw, ["data.train=[x]"]).model.quantizer.kl_weight == 5e-4
    raw["model"]["params"]["temperature_scheduler_config"]["params"]["warm_up_steps"] = 10
    assert "warm-up" in error_of(raw, ["data.train=[x]"]).problem
    raw = taming()
    raw["model"]["target"] = "taming.models.vqgan.EMAVQ"
    assert parse_config(raw, ["data.train=[x]"]).model.variant == "EMAVQ"


@pytest.mark.parametrize("mutate, path, word", [
    (lambda r: r["model"].update(target="taming.models.vqgan.VQSegmentationModel"), "model.target", "taming.models.vqgan.GumbelVQ"),
    (lambda r: r["model"]["params"].update(ignore_keys=["loss"]), "model.params.ignore_keys", "strictly"),
    (lambda r: r["model"]["params"].update(kl_weight=1.0), "model.params", "unknown key 'kl_weight'"),
    (lambda r: r["model"]["params"]["lossconfig"]["params"].update(disc_conditional=True), "model.params.lossconfig.params.disc_conditional", "not supported"),
    (lambda r: r["model"]["params"]["lossconfig"].update(target="taming.modules.losses.LPIPS"), "model.params.lossconfig.target", "VQLPIPSWithDiscriminator"),
    (lambda r: r["model"]["params"]["lossconfig"]["params"].update(disc_strat=3), "model.params.lossconfig.params", "did you mean 'disc_start'"),
    (lambda r: r["model"]["params"]["ddconfig"].update(double_z=True), "model.params.ddconfig.double_z", "double_z: false"),
    (lambda r: r["data"]["params"].update(batchsize=3), "data.params", "did you mean 'batch_size'"),
    (lambda r: r.update(lightnin={}), "<root>", "did you mean 'lightning'"),
])
def test_taming_errors(mutate, path, word):
    raw = taming()
    mutate(raw)
    e = error_of(raw, ["data.train=[x]"])
    assert e.path.startswith(path) and word in str(e)


# ----------------------------------------------------------------------------------------------- ConfigError cases

@pytest.mark.parametrize("mutate, path, word", [
    # unknown keys name the closest valid key
    (lambda r: r["train_args"].update(lrr=1e-3), "train_args", "did you mean 'lr'"),
    (lambda r: r["model_args"]["ddconfig"].update(chmult=[1]), "model_args.ddconfig", "did you mean 'ch_mult'"),
    (lambda r: r.update(data_arg={}), "<root>", "did you mean 'data_args'"),
    # wrong types
    (lambda r: r["train_args"].update(num_steps="many"), "train_args.num_steps", "expected an integer"),
    (lambda r: r["train_args"].update(use_gan="yes"), "train_args.use_gan", "expected true or false"),
    (lambda r: r["model_args"].update(ddconfig=[1]), "model_args.ddconfig", "expected a mapping"),
    # invalid values
    (lambda r: r["model_args"]["ddconfig"].update(ch_mult=[]), "model_args.ddconfig.ch_mult", "is empty"),
    (lambda r: r["model_args"].update(n_embed=1), "model_args.n_embed", "must be >= 2"),
    (lambda r: r["model_args"]["ddconfig"].update(resolution=33), "model_args.ddconfig.resolution", "not divisible"),
    (lambda r: r.update(data_process={"train": {"resolution": 31}}), "data_process.train", "expected a data folder path"),
    # a variant from another family / unknown values
    (lambda r: r["model_args"].update(model_variant="VQVAE2"), "model_args.model_variant", "not a taming variant"),
    (lambda r: r.update(model_type="VQVAE3"), "model_type", "did you mean 'VQVAE2'"),
    (lambda r: r.update(model_type="vqvae22"), "model_type", "did you mean 'vqvae2'"),
    (lambda r: (r.update(model_type="emavq"), r["model_args"].update(model_variant="VQModel")), "model_args.model_variant", "implies variant EMAVQ"),
    (lambda r: r["model_args"]["lossconfig"].update(target="my.losses.L2Loss"), "model_args.lossconfig.target", "VQLPIPSWithDiscriminator"),
    # given twice with different meanings
    (lambda r: r["train_args"].update(disc_weight=0.1), "train_args.disc_weight", "model_args.lossconfig.params.disc_weight"),
    (lambda r: r["data_args"].update(num_workers=1, num_threads=2), "data_args.num_workers", "data_args.num_threads"),
    (lambda r: r["train_args"].update(lr_decay=0), "train_args.lr_decay", "must be in (0, 1]"),
    (lambda r: r["data_args"].update(shard_id=2, num_shards=2), "data_args.shard_id", "must be in [0, num_shards)"),
])
def test_seed_config_errors(mutate, path, word):
    raw = seed()
    mutate(raw)
    e = error_of(raw)
    assert e.path.startswith(path), e
    assert word in str(e), e
    assert e.fix  # every message names a fix


@pytest.mark.parametrize("model_args, extra, path, word", [
    ({"nb_levels": 3, "scaling_rates": [4, 2]}, {}, "model_args.scaling_rates", "nb_levels is 3"),
    ({"scaling_rates": [3, 2]}, {}, "model_args.scaling_rates", "not powers of two"),
    ({"nb_entries": 1}, {}, "model_args.nb_entries", "must be >= 2"),
])
def test_vqvae2_config_errors(model_args, extra, path, word):
    raw = {"model_type": "vqvae2", "model_args": model_args, "data_args": {"training_data_files": "imgs"}, **extra}
    e = error_of(raw)
    assert e.path.startswith(path), e
    assert word in str(e), e


def test_native_errors_and_given_twice():
    e = error_of(native(train={"lr": 1e-4, "base_learning_rate": 1e-6}))
    assert e.path == "train.lr" and "train.base_learning_rate" in e.problem and "only one" in e.fix
    # lr given once via --set is the same conflict, named by its flag
    e = error_of(taming(), ["data.train=[x]", "train.lr=0.1"])
    assert "--set train.lr" in str(e) and "model.base_learning_rate" in str(e)
    ok = parse_config(taming(), ["data.train=[x]", "train.lr=0.1", "train.base_learning_rate=null"])
    assert ok.train.lr == 0.1 and ok.train.base_learning_rate is None
    e = error_of(native(model={"family": "vqvae2", "variant": "EMAVQ"}))
    assert e.path == "model.variant" and "TamingVQGAN" in e.fix
    e = error_of(native(trian={}))
    assert "did you mean 'train'" in str(e)
    e = error_of(native(model={"ddconfig": {"ch_mult": [1, 2], "resolution": 32, "attn_resolutions": [], "z_channels": "8"}}))
    assert e.path == "model.ddconfig.z_channels" and "expected an integer" in e.problem


def test_native_vqvae2_needs_no_variant():
    cfg = parse_config(native(model={"family": "vqvae2"}))
    assert cfg.model.variant is None and "model.variant" not in cfg._explicit


# --------------------------------------------------------------------------------------------------------- warnings

def test_ineffective_settings():
    raw = native(
        model={"variant": "VQModel", "quantizer": {"decay": 0.9, "kl_weight": 1.0, "kmeans_iters": 3},
               "vqvae2": {"nb_entries": 4}, "ddconfig": {"ch_mult": [1, 2], "attn_resolutions": [], "resolution": 32}},
        loss={"use_gan": False, "disc_weight": 0.5, "perceptual_weight": 0.0, "vgg_path": "vgg.pth"},
        train={"disc_lr": 1e-4, "disc_update_every": 2, "lr_decay": 0.5, "min_lr": 1e-6},
        log={"project": "p"},
    )
    cfg = parse_config(raw)
    got = {line.split(":")[0] for line in ineffective_settings(cfg)}
    assert got == {"loss.disc_weight", "loss.vgg_path", "train.disc_lr", "train.disc_update_every",
                   "model.quantizer.decay", "model.quantizer.kl_weight", "model.quantizer.kmeans_iters",
                   "model.vqvae2.nb_entries", "train.lr_decay", "train.min_lr", "log.project"}
    # turning the options on makes the same settings effective
    raw["loss"]["use_gan"] = True
    raw["loss"]["perceptual_weight"] = 1.0
    raw["model"]["variant"] = "EMAVQ"
    raw["train"]["lr_schedule"] = "exponential"
    raw["log"]["wandb"] = True
    got = {line.split(":")[0] for line in ineffective_settings(parse_config(raw))}
    assert got == {"model.quantizer.kl_weight", "model.quantizer.kmeans_iters", "model.vqvae2.nb_entries", "train.min_lr"}


def test_vqvae2_ignores_taming_fields():
    raw = {"model_type": "vqvae2", "model_args": {"n_embed": 16, "ddconfig": {"ch": 64}},
           "data_args": {"training_data_files": "imgs"}}
    lines = parse_config_with_warnings(raw)[1]
    # the previous system's VQ-VAE-2 dropped them; they load and are listed (issue 10: formerly mapped, then unused)
    assert any(l.startswith("model_args.n_embed: has no effect") and "ignored it too" in l for l in lines)
    assert any(l.startswith("model_args.ddconfig: has no effect") for l in lines)


def test_load_config_emits_one_warning(tmp_path):
    raw = seed(train_args={"use_gan": False, "disc_factor": 0.3, "disc_lr": 1e-4})
    p = tmp_path / "c.json"
    p.write_text("// comment\n" + json.dumps(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(p)
    ours = [w for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    # taming models: train_args.disc_* were ignored by the previous system, and are here, by name (issue 10)
    assert "train_args.disc_factor = 0.3: ignored" in text and "train_args.disc_lr = 0.0001: ignored" in text
    assert "loss.disc_start (from model_args.lossconfig.params.disc_start)" in text
    assert cfg.loss.use_gan is False
    # a clean native config emits nothing
    q = tmp_path / "n.yaml"
    q.write_text(yaml.safe_dump(native()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(q)
    assert not [w for w in caught if issubclass(w.category, ConfigWarning)]


# ------------------------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("raw, overrides", [
    (seed(), ()),
    (taming(), ("data.train=[x]",)),
    (native(), ()),
    (native(model={"family": "vqvae2"}), ("train.lr_schedule=cosine", "model.vqvae2.scaling_rates=[2, 2]")),
], ids=["seed", "taming", "native", "vqvae2"])
def test_round_trip(raw, overrides):
    cfg = parse_config(copy.deepcopy(raw), overrides)
    text = dump_yaml(cfg)
    again = parse_config(yaml.safe_load(text))
    assert isinstance(again, Config) and again == cfg
    assert again._format == "native"
    assert dump_yaml(again) == text


def test_round_trip_of_every_example(tmp_path):
    for path in sorted(EXAMPLES.iterdir()):
        cfg = load_config_with_warnings(path, ["data.train=[imgs/]"])[0]
        p = tmp_path / (path.stem + ".resolved.yaml")
        p.write_text(dump_yaml(cfg))
        assert load_config_with_warnings(p)[0] == cfg, path.name

"""The user's own config files (seed format and its later layout) with the meanings they had in the previous system.

Table-driven: every key of `../shared/seed/config-contract.md` set in a small config resolves to the native value of
its meaning there (inert keys and ignored values appear in the warning lines). Files in the user's layout (key sets
and value types of the 16 real first-version files and the later-format files) pass `check-config`; two of them train
on generated images.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vqforge.cli import main
from vqforge.config import load_config_with_warnings, parse_config, parse_config_with_warnings
from vqforge.config.differences import HEADER, previous_system_differences
from vqforge.config.schema import DataConfig, FAMILY_ALIASES, PENDING_FAMILY_ALIASES
from vqforge.errors import ConfigError

from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "user_configs"
# files of the user's layout that the user's own system could not run either: the error names the mistake
OWN_MISTAKE = {"param.json": "nb_levels is 3"}
LOSS = "models.taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"

TAMING = {
    "model_type": "TamingVQGAN",
    "model_args": {"model_variant": "EMAVQ", "learning_rate": 2e-5, "n_embed": 64, "embed_dim": 8,
                   "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                "resolution": 32, "z_channels": 8},
                   "lossconfig": {"target": LOSS, "params": {"disc_start": 300, "disc_weight": 0.8}}},
    "train_args": {},
    "data_args": {"batch_size": 2, "training_data_files": ["a.mp4", "b.mp4"]},
}
VQVAE2 = {
    "model_type": "vqvae2",
    "model_args": {"n_hid": 32, "vocab_size": 64, "n_init": 8, "input_channels": 3},
    "scaling_rates": [4, 2],
    "train_args": {},
    "data_args": {"batch_size": 2, "training_data_files": ["a.mp4"]},
}
LATER = {
    "model_type": "TamingVQGAN",
    "model_args": copy.deepcopy(TAMING["model_args"]),
    "data": {"train_dir": "clips/train", "batch_size": 1, "sequence_length": 8},
    "train": {"num_steps": 100, "log_dir": "runs/l", "save_dir": "runs/l"},
    "wandb": {"enabled": False},
}
del LATER["model_args"]["learning_rate"]


def resolve(base: dict, edits: dict, overrides=(), name: str | None = None):
    """base with dotted-key edits ("train_args.lr": 0.1; value DELETE removes the key) -> (Config, warning lines)."""
    raw = copy.deepcopy(base)
    for dotted, value in edits.items():
        *parents, leaf = dotted.split(".")
        cur = raw
        for p in parents:
            cur = cur.setdefault(p, {})
        if value is DELETE:
            cur.pop(leaf, None)
        else:
            cur[leaf] = value
    return parse_config_with_warnings(raw, overrides, name=name)


DELETE = object()


def native(cfg, path: str):
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------- keys with their meanings

MEANINGS = [
    # (base, edits, {native path: value}) -- one row per key of the contract, in the previous system's meaning
    ("taming", {"data_process.train": "clips/train"}, {"data.train": ["clips/train"]}),
    ("taming", {"data_process.vaild": "clips/val"}, {"data.val": ["clips/val"]}),
    ("taming", {"train_args.checkpoint_path": "old/checkpoint_step5000.pth.tar"},
     {"train.resume_from": "old/checkpoint_step5000.pth.tar", "train.out_dir": None}),
    ("vqvae2", {"train_args.checkpoint_path": None}, {"train.resume_from": None}),
    ("taming", {"model_args.learning_rate": 3e-6},
     {"train.lr": 3e-6, "train.disc_lr": None, "train.betas": [0.5, 0.9], "train.disc_betas": [0.5, 0.9]}),
    ("taming", {"model_args.learning_rate": DELETE, "model_args.lr": 7e-5}, {"train.lr": 7e-5}),
    ("taming", {"model_args.learning_rate": DELETE}, {"train.lr": 1e-4}),
    ("vqvae2", {"train_args.lr": 2e-4}, {"train.lr": 2e-4, "train.betas": [0.9, 0.999]}),
    ("vqvae2", {"train_args.disc_factor": 0.8}, {"loss.disc_factor": 0.8}),
    ("vqvae2", {"train_args.disc_start": 5000}, {"loss.disc_start": 5000}),
    ("vqvae2", {"train_args.disc_lr": 1e-5}, {"train.disc_lr": 1e-5}),
    ("vqvae2", {"train_args.disc_beta1": 0.4, "train_args.disc_beta2": 0.95}, {"train.disc_betas": [0.4, 0.95]}),
    ("vqvae2", {"train_args.pixel_loss_factor": 0.5, "train_args.perceptual_loss_factor": 2.0},
     {"loss.pixelloss_weight": 0.5, "loss.perceptual_weight": 2.0, "loss.pixel_loss": "l1", "loss.use_gan": True}),
    ("vqvae2", {"train_args.use_gan": False},
     {"loss.use_gan": False, "loss.pixel_loss": "l2", "loss.perceptual_weight": 0.0, "loss.pixelloss_weight": 1.0}),
    ("taming", {"train_args.lr_decay": 0.95},
     {"train.lr_decay": 0.95, "train.lr_schedule": "exponential", "train.lr_decay_every": 1000,
      "train.disc_lr_schedule": "constant"}),
    ("taming", {"data_args.shard_id": 1, "data_args.num_shards": 3}, {"data.shard_id": 1, "data.num_shards": 3}),
    ("taming", {"train_args.num_steps": 77, "train_args.save_interval": 11, "train_args.validation_interval": 5},
     {"train.num_steps": 77, "train.save_interval": 11, "train.validation_interval": 5}),
    ("taming", {"train_args.use_gan": False}, {"loss.use_gan": False}),
    ("taming", {"data_args.num_threads": 3, "data_args.sequence_length": 4, "data_args.seed": 2025},
     {"data.num_workers": 3, "data.sequence_length": 4, "train.seed": 2025}),
    ("taming", {"data_args.validation_data_files": ["v.mp4"]}, {"data.val": ["v.mp4"]}),
    ("taming", {"use_images": True, "use_wandb": True, "project_name": "p"},
     {"data.use_images": True, "log.wandb": True, "log.project": "p"}),
    ("vqvae2", {"scaling_rates": [8, 2]}, {"model.vqvae2.scaling_rates": [8, 2], "model.vqvae2.nb_levels": 2}),
    ("vqvae2", {}, {"model.vqvae2.hidden_channels": 32, "model.vqvae2.nb_entries": 64, "model.vqvae2.embed_dim": 8,
                    "model.vqvae2.in_channels": 3}),
    ("taming", {"model_args.ddconfig.ch_mult": [1, 2, 2], "model_args.ddconfig.attn_resolutions": [16, 4]},
     {"model.ddconfig.attn_resolutions": [16]}),
    ("taming", {"model_args.n_embed": DELETE, "model_args.vocab_size": 128}, {"model.n_embed": 128}),
]


@pytest.mark.parametrize("base, edits, expected", MEANINGS, ids=lambda v: None)
def test_each_key_has_its_previous_meaning(base, edits, expected):
    cfg, _ = resolve({"taming": TAMING, "vqvae2": VQVAE2}[base], edits)
    for path, value in expected.items():
        assert native(cfg, path) == value, path


def test_absent_keys_take_the_first_versions_defaults():
    for base in (TAMING, VQVAE2):
        cfg, _ = resolve(base, {})
        assert cfg.loss.use_gan is True
        assert (cfg.train.num_steps, cfg.train.save_interval, cfg.train.validation_interval) == (100000, 10000, 10000)
        assert (cfg.train.lr_schedule, cfg.train.lr_decay, cfg.train.lr_decay_every) == ("exponential", 0.99, 1000)
        assert cfg.train.disc_lr_schedule == "constant"  # the scheduler decayed the main optimizer only
        assert cfg.data.random_crop is False and cfg.data.hflip is False  # whole frames, no flip
        assert cfg.log.wandb is False and cfg.log.project == "dalle_train_vae"
    cfg, _ = resolve(VQVAE2, {})
    assert (cfg.train.lr, cfg.train.betas) == (1e-3, [0.9, 0.999])
    assert (cfg.loss.disc_factor, cfg.loss.disc_start, cfg.loss.disc_weight) == (1.0, 20000, 0.8)
    assert cfg.model.vqvae2.res_channels == 64 and cfg.model.quantizer.beta == 1.0
    assert (cfg.loss.pixel_loss, cfg.loss.perceptual_weight) == ("l1", 1.0)
    cfg, _ = resolve(VQVAE2, {"scaling_rates": DELETE})
    assert cfg.model.vqvae2.scaling_rates == [4, 2]
    cfg, _ = resolve(TAMING, {"model_args.lossconfig": DELETE})  # the loss the previous system built then
    assert (cfg.loss.disc_start, cfg.loss.disc_weight, cfg.loss.codebook_weight) == (10000, 0.8, 1.0)


def test_folder_name_and_config_stem_make_the_run_directory(tmp_path):
    raw = copy.deepcopy(VQVAE2)
    raw["train_args"]["folder_name"] = "/data/save_data"
    p = tmp_path / "task7.json"
    p.write_text(json.dumps(raw))
    cfg, _ = load_config_with_warnings(p)
    assert cfg.train.out_dir == "/data/save_data_task7"
    # --out still wins in the train command; --set train.out_dir overrides like any key
    cfg, _ = load_config_with_warnings(p, ["train.out_dir=elsewhere"])
    assert cfg.train.out_dir == "elsewhere"
    q = tmp_path / "task7.v2.json"  # the previous system cut the name at its first dot
    q.write_text(json.dumps(raw))
    assert load_config_with_warnings(q)[0].train.out_dir == "/data/save_data_task7"


@pytest.mark.parametrize("alias", sorted(FAMILY_ALIASES))
def test_every_model_type_alias(alias):
    base = TAMING if FAMILY_ALIASES[alias] == "taming" else VQVAE2
    edits = {"model_type": alias}
    if FAMILY_ALIASES[alias] == "vqvae2_optvq":  # its own default is 3 levels; this file has 2 scaling rates
        edits["model_args.nb_levels"] = 2
    if alias in ("EMAVQ", "emavq"):
        edits["model_args.model_variant"] = DELETE
    cfg, _ = resolve(base, edits)
    assert cfg.model.family == FAMILY_ALIASES[alias]
    if alias in ("EMAVQ", "emavq"):
        assert cfg.model.variant == "EMAVQ"


def test_no_model_type_of_the_previous_registry_is_missing():
    assert PENDING_FAMILY_ALIASES == {}
    previous = ("VqVae", "vq_vae", "vqvae", "VQVAE2", "vqvae2", "VQVAE2_OptVQ", "vqvae2_optvq", "Vqvae2OptVQ",
                "vqvae2optvq", "vqvaeoptvq", "TamingVQGAN", "taming_vqgan", "TamingVQModel", "taming_vqmodel", "EMAVQ",
                "emavq", "VQGAN", "vqgan")
    assert set(previous) <= set(FAMILY_ALIASES)


# ------------------------------------------------------------------------------------------- inert and ignored keys

INERT = [
    (TAMING, "time", "1-5-10-11-3"),
    (TAMING, "train_args.default_gpu", "cuda:2"),
    (TAMING, "train_args.device", "auto"),
    (TAMING, "train_args.gpu_index", 1),
    (TAMING, "data_args.device_id", 0),
    (TAMING, "data_args.initial_prefetch_size", 1024),
    (TAMING, "data_args.validation_ratio", 0.1),
    (TAMING, "data_args.normalize_compute_args", {"max_videos": 100, "sample_frames": True}),
    (TAMING, "data_process.raw_video_dir", "./data/videos"),
    (TAMING, "data_process.processed_dir", "./data/processedVideo"),
    (TAMING, "data_process.clipdata_dir", "./data/clips"),
    (TAMING, "data_process.val_ratio", 0.1),
    (TAMING, "scaling_rates", [8, 2]),
    (TAMING, "model_args.group_count", 5),
    (VQVAE2, "model_args.group_count", 5),
    (VQVAE2, "model_args.n_blk_per_group", 1),
    (VQVAE2, "model_args.output_channels", 3),
    (VQVAE2, "model_args.commitment_cost", 0.25),
    (VQVAE2, "model_args.decay", 0.99),
    (VQVAE2, "model_args.learning_rate", 1e-4),
    (VQVAE2, "model_args.lossconfig", {"target": LOSS}),
]


@pytest.mark.parametrize("base, key, value", INERT, ids=lambda v: v if isinstance(v, str) else None)
def test_inert_keys_load_and_are_listed(base, key, value):
    plain, _ = resolve(base, {})
    cfg, lines = resolve(base, {key: value})
    assert cfg == plain  # no effect at all
    line = next(l for l in lines if l.startswith(f"{key}: has no effect"))
    assert "the previous system ignored it too" in line


IGNORED = [
    # taming models: the previous system used lossconfig / learning_rate and dropped these
    ("train_args.lr", 1e-3, "model_args.learning_rate (2e-05)"),
    ("train_args.disc_lr", 1e-5, "model_args.learning_rate"),
    ("train_args.disc_beta1", 0.3, "(0.5, 0.9)"),
    ("train_args.disc_beta2", 0.99, "(0.5, 0.9)"),
    ("train_args.disc_factor", 0.8, "disc_factor 1.0"),
    ("train_args.disc_start", 50000, "model_args.lossconfig.params.disc_start = 300 applies"),
    ("train_args.pixel_loss_factor", 2.0, "pixelloss_weight"),
    ("train_args.perceptual_loss_factor", 2.0, "perceptual_weight"),
]


@pytest.mark.parametrize("key, value, instead", IGNORED, ids=lambda v: v if isinstance(v, str) else None)
def test_values_the_previous_system_ignored_are_named(key, value, instead):
    plain, _ = resolve(TAMING, {})
    cfg, lines = resolve(TAMING, {key: value})
    assert cfg == plain  # the lossconfig / learning_rate values win, as they did
    line = next(l for l in lines if l.startswith(f"{key} = {value!r}: ignored"))
    assert instead in line and "takes effect for non-taming models" in line


def test_data_process_folders_win_over_the_file_lists():
    cfg, lines = resolve(TAMING, {"data_process.train": "clips/train", "data_args.validation_data_files": ["v.mp4"]})
    assert cfg.data.train == ["clips/train"] and cfg.data.val == ["v.mp4"]  # vaild absent: the list stays
    assert any(l.startswith("data_args.training_data_files = ['a.mp4', 'b.mp4']: ignored") for l in lines)


@pytest.mark.parametrize("base, edits, path, words", [
    (TAMING, {"train_args.lrr": 1}, "train_args", "did you mean 'lr'"),
    (TAMING, {"data_process.valid": "v"}, "data_process", "did you mean 'vaild'"),
    (TAMING, {"data_args.shard": 1}, "data_args", "did you mean 'shard_id'"),
    (TAMING, {"tme": "x"}, "<root>", "did you mean 'time'"),
    (VQVAE2, {"model_args.group_cnt": 5}, "model_args", "did you mean 'group_count'"),
    (TAMING, {"data_process.train": {"resolution": 64}}, "data_process.train", "--set data.resolution"),
    (TAMING, {"train_args.folder_name": 3}, "train_args.folder_name", "path string"),
    (TAMING, {"train_args.use_taming_loss": False}, "train_args.use_taming_loss", "not supported"),
    (TAMING, {"data_args.shard_id": 3, "data_args.num_shards": 3}, "data_args.shard_id", "[0, 3)"),
    (TAMING, {"model_args.lossconfig.params.disc_start": DELETE}, "model_args.lossconfig.params.disc_start",
     "requires it"),
])
def test_keys_the_previous_system_never_read_stay_errors(base, edits, path, words):
    with pytest.raises(ConfigError) as ei:
        resolve(base, edits)
    assert ei.value.path.startswith(path) and words in str(ei.value) and ei.value.fix


def test_unreachable_attention_native_error_taming_yaml_warning():
    with pytest.raises(ConfigError, match="never occur"):
        parse_config({"model": {"ddconfig": {"ch": 32, "ch_mult": [1, 2], "resolution": 32, "attn_resolutions": [4]}},
                      "data": {"resolution": 32}})
    taming_yaml = {"model": {"target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": 8, "n_embed": 64, "ddconfig": {"ch": 32, "ch_mult": [1, 2], "resolution": 32, "z_channels": 8,
                                                    "attn_resolutions": [16, 4], "num_res_blocks": 1}}}}
    cfg, lines = parse_config_with_warnings(taming_yaml, ["data.train=[x]"])
    assert cfg.model.ddconfig.attn_resolutions == [16]
    assert any("attn_resolutions: [4] never occur" in l for l in lines)


# ------------------------------------------------------------------------------------------------- the later format

LATER_MEANINGS = [
    ({"model_args.rvq_levels": 4},
     {"model.quantizer.rvq_levels": 4, "model.quantizer.shared_codebook": True, "model.variant": "EMAVQ"}),
    ({"model_args.rvq_levels": 4, "model_args.use_residual_rq": False}, {"model.quantizer.rvq_levels": 1}),
    ({"data.use_images": True, "data.val_dir": "clips/val", "data.batch_size": 3, "data.num_workers": 1,
      "data.sequence_length": 2, "data.resolution": 64, "data.seed": 9, "train.validation_interval": 10},
     {"data.use_images": True, "data.train": ["clips/train"], "data.val": ["clips/val"], "data.batch_size": 3,
      "data.num_workers": 1, "data.sequence_length": 2, "data.resolution": 64, "train.seed": 9,
      "train.validation_interval": 10}),
    ({"train.device": "cuda:3", "train.num_steps": 9, "train.lr": 4.5e-6, "train.disc_lr": 1e-5,
      "train.save_interval": 7, "train.log_interval": 5, "train.grad_accum_steps": 4},
     {"train.device": "cuda:3", "train.num_steps": 9, "train.lr": 4.5e-6, "train.disc_lr": 1e-5,
      "train.save_interval": 7, "log.every": 5, "train.grad_accum_steps": 4}),
    ({"train.save_dir": "ckpts", "train.resume_ckpt": "ckpts/checkpoint_step5000.pt"},
     {"train.out_dir": "ckpts", "train.resume_from": "ckpts/checkpoint_step5000.pt"}),
    ({"train.best_max_images": 2048, "data.val_dir": "v", "train.validation_interval": 10},
     {"data.max_val_samples": 256}),  # 2048 images = 256 clips of 8 frames
    ({"data.val_dir": "v"}, {"data.val": []}),  # no validation_interval: the previous system never validated
    ({"wandb.enabled": True, "wandb.project": "rqvae", "wandb.image_interval": 500},
     {"log.wandb": True, "log.project": "rqvae", "log.image_every": 500}),
    ({"train.log_interval": None, "wandb.log_interval": 20}, {"log.every": 20}),
    ({}, {"train.lr": 1e-4, "train.disc_lr": None, "train.betas": [0.5, 0.9], "train.lr_schedule": "constant",
          "train.disc_update_every": 1, "train.grad_clip": 1.0, "loss.use_gan": True, "data.random_crop": False}),
]


@pytest.mark.parametrize("edits, expected", LATER_MEANINGS, ids=lambda v: None)
def test_later_format_keys(edits, expected):
    edits = {k: v for k, v in edits.items()}
    if edits.get("train.log_interval", 0) is None:
        edits["train.log_interval"] = DELETE
    cfg, _ = resolve(LATER, edits)
    assert cfg._format == "later"
    for path, value in expected.items():
        assert native(cfg, path) == value, path


def test_later_format_notes_and_errors():
    _, lines = resolve(LATER, {"train.log_dir": "elsewhere", "wandb.name": "run-1", "wandb.entity": "me",
                               "model_args.ckpt_path": "x.ckpt"})
    text = "\n".join(lines)
    assert "train.log_dir = 'elsewhere'" in text and "wandb.name = 'run-1'" in text and "wandb.entity = 'me'" in text
    assert "model_args.ckpt_path: has no effect" in text
    for edits, words in (({"model_type": "vqvae2"}, "taming VQGANs only"),
                         ({"train.lrr": 1}, "did you mean 'lr'"),
                         ({"wandb.nme": "x"}, "did you mean 'name'")):
        with pytest.raises(ConfigError) as ei:
            resolve(LATER, edits)
        assert words in str(ei.value)


# ----------------------------------------------------------------------------------- files in the user's layout

USER_FILES = sorted(FIXTURES.glob("*/*.json"))


def test_fixtures_cover_the_real_key_sets():
    assert len([p for p in USER_FILES if p.parent.name == "first"]) >= 11
    texts = [p.read_text() for p in USER_FILES]
    assert any("//" in t for t in texts) and any("/*" in t for t in texts)  # comments, as the user writes them
    assert any('"checkpoint_path": null' in t for t in texts) and any('"checkpoint_path": "' in t for t in texts)


@pytest.mark.parametrize("path", USER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_user_layout_files_pass_check_config(path, capsys):
    code = main(["check-config", str(path)])
    err = capsys.readouterr().err
    if path.name in OWN_MISTAKE:
        assert code == 2 and OWN_MISTAKE[path.name] in err and "scaling_rates" in err
        return
    assert code == 0, err
    assert "Traceback" not in err


MIRROR = Path("/work/.mirror/114514yangyi+DCVC-VQGAN/repo")
REAL_FIRST = ["param.json"] + [f"multitask/{n}.json" for n in ("taming", "taming_16_high", "taming_32", "taming_32_high",
                                                                "taming_64", "taming_64_high")] \
    + [f"multitask/task{i}.json" for i in range(1, 10)]


@pytest.mark.skipif(not MIRROR.is_dir(), reason="the user's repository mirror is not on this machine")
@pytest.mark.parametrize("rel", REAL_FIRST)
def test_the_users_real_first_version_files(rel, tmp_path, capsys):
    """The 16 real files themselves, where their public repository is mirrored (this development machine)."""
    text = subprocess.run(["git", "-C", str(MIRROR), "show", f"4d95991:DCVC-family/DCVC/vqgan/project/{rel}"],
                          capture_output=True, text=True, check=True).stdout
    p = tmp_path / Path(rel).name
    p.write_text(text)
    code = main(["check-config", str(p)])
    err = capsys.readouterr().err
    if rel == "param.json":  # 3 OptVQ levels (that family's default) but 2 scaling rates: it failed there too
        assert code == 2 and "nb_levels is 3" in err and "scaling_rates" in err
    else:
        assert code == 0, err


REAL_LATER = ["VQGAN/config.json", "RVQ-VQGAN/config.json", "RVQ-VQGAN/config-1.json", "RVQ-VQGAN/config-2.json",
              "RVQ-VQGAN-1/config.json", "RVQ-VQGAN-1/config-1.json", "RVQ-VQGAN-1/config-2.json", "PQ-GAN/config.json"]


@pytest.mark.skipif(not MIRROR.is_dir(), reason="the user's repository mirror is not on this machine")
@pytest.mark.parametrize("rel", REAL_LATER)
def test_the_users_real_later_files(rel, tmp_path, capsys):
    text = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:DCVC-family/DCVC/vqgan/{rel}"],
                          capture_output=True, text=True, check=True).stdout
    p = tmp_path / "config.json"
    p.write_text(text)
    code = main(["check-config", str(p)])
    err = capsys.readouterr().err
    assert code == 0, err


# ------------------------------------------------------------------------------------------------- the data side

def test_shards_are_contiguous_slices(tmp_path):
    from vqforge.data import check_data_config, resolve_split
    from vqforge.data.synthetic import write_image

    for i in range(7):
        write_image(tmp_path / f"img_{i}.png", np.full((8, 8, 3), i * 30, np.uint8))
    names = lambda cfg: [p.name for p in resolve_split(cfg, "train")]  # noqa: E731
    slices = [names(DataConfig(train=[str(tmp_path)], use_images=True, shard_id=k, num_shards=3)) for k in range(3)]
    assert slices == [["img_0.png", "img_1.png"], ["img_2.png", "img_3.png"], ["img_4.png", "img_5.png", "img_6.png"]]
    with pytest.raises(ConfigError, match="empty"):
        check_data_config(DataConfig(train=[str(tmp_path)], use_images=True, shard_id=0, num_shards=8))


# ----------------------------------------------------------------------------------- differences at start-up

def test_differences_block_lists_what_applies():
    cfg, _ = resolve(VQVAE2, {"train_args.use_gan": False})
    lines = previous_system_differences(cfg)
    text = "\n".join(lines)
    assert "no discriminator is built" in text and "BGR" in text and "shuffled" in text
    cfg, _ = resolve(TAMING, {"use_images": True})
    text = "\n".join(previous_system_differences(cfg))
    assert "no discriminator" not in text and "BGR" not in text and "every 3 generator steps" in text
    cfg, _ = resolve(LATER, {})
    assert "BGR" not in "\n".join(previous_system_differences(cfg))
    assert previous_system_differences(parse_config({"data": {"source": "sample_photos"}})) == []


def test_lr_decay_leaves_the_discriminator_alone():
    """train.disc_lr_schedule: constant (the seed format's default) keeps the discriminator at disc_lr."""
    import types

    import torch

    from vqforge.train.trainer import LRPlan, Trainer

    class Parts:  # the attributes Trainer._set_lr reads
        pass

    for follows, expected_d in ((False, 1e-3), (True, 1e-3 * 0.5**3)):
        parts = Parts()
        parts.opt_g = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        parts.opt_d = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        parts.cfg = types.SimpleNamespace(  # the TrainerConfig field _set_lr reads
            lr_plan=LRPlan(2e-3, 1e-3, "exponential", 100, 0, 0.5, 10, 0.0, disc_follows_schedule=follows))
        assert Trainer._set_lr(parts, 35) == pytest.approx(2e-3 * 0.5**3)
        assert parts.opt_g.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.5**3)
        assert parts.opt_d.param_groups[0]["lr"] == pytest.approx(expected_d)
    cfg, _ = resolve(TAMING, {})
    assert cfg.train.disc_lr_schedule == "constant"
    assert parse_config({"data": {"source": "sample_photos"}}).train.disc_lr_schedule == "same"  # native default


# ------------------------------------------------------------------------------------------------------ training

def _images(folder: Path, n: int, seed: int) -> Path:
    from vqforge.data.synthetic import write_image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        base = rng.integers(0, 255, (1, 1, 3))
        ramp = np.linspace(0, 60, 40, dtype=np.int64)[None, :, None]
        write_image(folder / f"frame_{i}.png", np.clip(base + ramp + rng.integers(0, 20, (40, 40, 3)), 0, 255)
                    .astype(np.uint8))
    return folder


COMMON_SETS = ["data.sequence_length=2", "data.batch_size=2", "data.num_workers=0", "data.resolution=32",
               "train.num_steps=3", "train.save_interval=3", "train.validation_interval=3", "train.val_max_batches=1",
               "log.every=1", "log.progress=false", "log.tensorboard=false", "log.wandb=false"]
TAMING_SETS = ["model.ddconfig.ch=32", "model.ddconfig.ch_mult=[1,2]", "model.ddconfig.attn_resolutions=[]",
               "model.ddconfig.resolution=32", "model.ddconfig.z_channels=8", "model.n_embed=32", "model.embed_dim=8",
               "loss.perceptual_weight=0", "loss.disc_start=1", "loss.disc_num_layers=2", "loss.disc_ndf=8",
               "train.lr_decay=0.5", "train.lr_decay_every=1"]
VQVAE2_SETS = ["model.vqvae2.hidden_channels=16", "model.vqvae2.res_channels=8", "model.vqvae2.nb_res_layers=1",
               "model.vqvae2.embed_dim=8", "model.vqvae2.nb_entries=32", "model.vqvae2.scaling_rates=[2,2]"]


def _argv(path: Path, run: Path, data: Path, sets: list[str]) -> list[str]:
    argv = ["train", str(path), "--out", str(run)]
    for s in [f"data.train=[{data / 'train'}]", f"data.val=[{data / 'val'}]", *COMMON_SETS, *sets]:
        argv += ["--set", s]
    return argv


def test_a_users_taming_emavq_file_trains(tmp_path, capsys):
    data = tmp_path / "data"
    _images(data / "train", 6, 0), _images(data / "val", 2, 1)
    run = tmp_path / "run"
    assert main(_argv(FIXTURES / "first" / "taming.json", run, data, TAMING_SETS)) == 0
    log = (run / "train.log").read_text()
    assert log.count(HEADER) == 1 and "every 3 generator steps" in log
    assert "use_gan: true" in log and "model: taming/EMAVQ" in log
    assert (run / "checkpoints" / "step_00000003" / "discriminator.safetensors").exists()
    # lr_decay on the main optimizer only: 3 steps at decay 0.5 every step -> lr x 0.25 at the last step, while the
    # discriminator keeps model_args.learning_rate
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r.get("split") == "train" and "lr" in r]
    assert lrs and lrs[-1] == pytest.approx(4.5e-6 * 0.25)


def test_a_users_vqvae2_file_trains(tmp_path, capsys):
    data = tmp_path / "data"
    _images(data / "train", 6, 2), _images(data / "val", 2, 3)
    run = tmp_path / "run"
    assert main(_argv(FIXTURES / "first" / "task1.json", run, data, VQVAE2_SETS)) == 0
    log = (run / "train.log").read_text()
    assert log.count(HEADER) == 1 and "no discriminator is built" in log
    assert "use_gan: false" in log and "model: vqvae2" in log
    assert not (run / "checkpoints" / "step_00000003" / "discriminator.safetensors").exists()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert train and all(r["p_loss"] == 0 for r in train)  # MSE + VQ loss: no LPIPS


def test_checkpoint_path_resumes_a_run(tmp_path, capsys):
    """train_args.checkpoint_path is passed on as --resume (here a vqforge run directory)."""
    data = tmp_path / "data"
    _images(data / "train", 6, 4), _images(data / "val", 2, 5)
    run = tmp_path / "run"
    assert main(_argv(FIXTURES / "first" / "task1.json", run, data, VQVAE2_SETS)) == 0
    from vqforge.config.readers import read_raw

    raw = read_raw(FIXTURES / "first" / "task1.json")  # the same file, now pointing at the run to resume
    raw["train_args"]["checkpoint_path"] = str(run)
    cont = tmp_path / "task1.json"
    cont.write_text(json.dumps(raw))
    capsys.readouterr()
    assert main(_argv(cont, run, data, [*VQVAE2_SETS, "train.num_steps=5"])) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "at step 3" in err


def test_checkpoint_path_resumes_a_previous_system_pth_tar(tmp_path, capsys):
    """The user's own layout end to end: a taming EMAVQ JSON whose train_args.checkpoint_path names a .pth.tar that
    the previous system wrote (built from its construction rules) continues from that file's step."""
    import previous_fixtures as pf
    from vqforge.config.readers import read_raw

    data = tmp_path / "data"
    _images(data / "train", 6, 6), _images(data / "val", 2, 7)
    dd = {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    old = tmp_path / "old" / "checkpoint_step2.pth.tar"
    old.parent.mkdir()
    pf.first_version_taming(old, dd=dd, n_embed=32, embed_dim=8, variant="EMAVQ",
                            disc={"in_channels": 3, "ndf": 8, "n_layers": 2}, steps=2)
    raw = read_raw(FIXTURES / "first" / "taming.json")
    raw["train_args"]["checkpoint_path"] = str(old)
    cfg = tmp_path / "taming.json"
    cfg.write_text(json.dumps(raw))
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(_argv(cfg, run, data, [*TAMING_SETS, "train.num_steps=5", "train.save_interval=5"])) == 0
    err = capsys.readouterr().err
    assert "resume from a checkpoint of the previous system, first version (.pth.tar)" in err
    assert "restored: model weights" in err and "restored: discriminator weights" in err
    assert "continuing with step 3" in err
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "train"]
    assert steps == [4, 5]  # logged with the count of steps done, as in every run

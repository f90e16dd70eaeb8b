"""Checkpoints of the user's previous system: resume (`--resume FILE`, `train.resume_from`) and `vqforge convert`.

The files are built by `previous_fixtures.py` from the previous system's construction rules and saved with
torch.save, as its trainers did."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

import vqforge
from vqforge.cli import main
from vqforge.errors import CheckpointError
from vqforge.train.build import build_run

import previous_fixtures as pf
from conftest import tiny_config, tiny_dict

DD = {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
      "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
DISC = {"in_channels": 3, "ndf": 8, "n_layers": 2}
# the previous system's optimizer settings for taming models: Adam betas (0.5, 0.9), lr_decay 0.99 every 1000 steps
TRAIN = {"lr": 1e-3, "lr_schedule": "exponential", "lr_decay": 0.99, "lr_decay_every": 1000, "num_steps": 7,
         "save_interval": 100, "validation_interval": 100}
VQVAE2 = {"in_channels": 3, "hidden_channels": 16, "res_channels": 8, "nb_res_layers": 1, "nb_levels": 2,
          "embed_dim": 8, "nb_entries": 32, "scaling_rates": [4, 2]}


def taming_cfg(train: dict | None = None, **sections) -> dict:
    return tiny_dict(train={**TRAIN, **(train or {})}, **sections)


def vqvae2_dict(use_gan: bool = True, **train):
    d = tiny_dict(train={**TRAIN, **train})
    d["model"] = {"family": "vqvae2", "vqvae2": dict(VQVAE2)}
    d["loss"] = {"perceptual_weight": 0.0, "use_gan": use_gan, "disc_num_layers": 3, "disc_ndf": 8}
    d["train"]["betas"] = [0.9, 0.999]
    return d


def write_cfg(tmp_path: Path, d: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def taming_file(tmp_path: Path, variant: str = "EMAVQ", **kw) -> tuple[Path, dict]:
    path = tmp_path / "checkpoint_step4.pth.tar"
    return path, pf.first_version_taming(path, dd=DD, n_embed=32, embed_dim=8, variant=variant, disc=DISC, **kw)


def build(cfg_dict: dict, run: Path, resume: Path):
    from vqforge.config import parse_config

    return build_run(parse_config(cfg_dict), run, resume=str(resume))


# ---- the fixture builder writes what the previous system wrote --------------------------------------------------
def test_fixture_builder_matches_the_taming_reference_key_names(golden_dir):
    """The construction rules give exactly taming-transformers' key names and shapes (golden reference files)."""
    from safetensors.torch import load_file

    ref = json.loads((golden_dir / "reference.json").read_text())["model"]
    shapes = pf.taming_state_shapes(ref["ddconfig"], ref["n_embed"], ref["embed_dim"], "VQModel",
                                    {"in_channels": 3, "ndf": 16, "n_layers": 2})
    model = load_file(str(golden_dir / "vqmodel.safetensors"))
    disc = load_file(str(golden_dir / "discriminator.safetensors"))
    mine = {k: s for k, s in shapes.items() if not k.startswith("loss.perceptual_loss.")}
    assert mine == {k: tuple(v.shape) for k, v in {**model, **disc}.items()}


# ---- first version, taming EMAVQ ---------------------------------------------------------------------------------
def test_taming_emavq_pth_tar_resumes_from_the_cli(tmp_path, capsys):
    path, ckpt = taming_file(tmp_path)
    cfg = write_cfg(tmp_path, taming_cfg())
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--resume", str(path)]) == 0
    err = capsys.readouterr().err
    assert "resume from a checkpoint of the previous system, first version (.pth.tar)" in err
    assert "restored: model weights: 77 tensors" in err or "restored: model weights:" in err
    assert "restored: discriminator weights" in err
    assert "restored: autoencoder optimizer ('optimizer')" in err
    assert "restored: discriminator optimizer ('optimizer_disc')" in err
    assert "'steps': 4 is the last step the file trained; continuing with step 5" in err
    assert "restored: learning-rate schedule: lr 0.001 = 0.001 × 0.99^0" in err
    assert "starts fresh: data order" in err and "starts fresh: random number generators" in err
    assert "not used from the file: " in err and "LPIPS" in err
    assert "resumed from" in err and "at step 5" in err
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "train"]
    assert steps == [6, 7]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000007"
    # the run is a vqforge run now: it continues with --resume RUN_DIR
    assert main(["train", str(cfg), "--out", str(run), "--resume", str(run), "--set", "train.num_steps=8"]) == 0
    assert "at step 7" in capsys.readouterr().err


def test_weights_and_optimizer_moments_land_on_the_right_parameters(tmp_path):
    """VQModel: the previous system's optimizer order (encoder, decoder, quantize, quant_conv, post_quant_conv) is
    not vqforge's (quant_conv before quantize); moments must follow the parameter names, not the positions."""
    path, ckpt = taming_file(tmp_path, variant="VQModel")
    run = build(taming_cfg(model={"variant": "VQModel"}), tmp_path / "run", path)
    tr = run.trainer
    model = tr.raw_model
    sd = model.state_dict()
    for k in ("encoder.conv_in.weight", "quantize.embedding.weight", "post_quant_conv.bias"):
        assert torch.equal(sd[k], ckpt["state_dict"][k]), k
    disc = tr.discriminator.state_dict()
    assert torch.equal(disc["main.0.weight"], ckpt["state_dict"]["loss.discriminator.main.0.weight"])
    order = pf.taming_opt_ae_order(pf.taming_state_shapes(DD, 32, 8, "VQModel", DISC), "VQModel")
    saved = ckpt["optimizer"]["state"]
    params = dict(model.named_parameters())
    for name in ("quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_out.bias"):
        mine = tr.opt_g.state[params[name]]
        assert torch.equal(mine["exp_avg"], saved[order.index(name)]["exp_avg"]), name
        assert torch.equal(mine["exp_avg_sq"], saved[order.index(name)]["exp_avg_sq"]), name
        assert float(mine["step"]) == 2.0
    # the config's betas stay in force
    assert tuple(tr.opt_g.param_groups[0]["betas"]) == (0.5, 0.9)
    assert tr.counters.step == 5
    run.logger.close()


def test_use_gan_false_ignores_the_files_discriminator_and_says_so(tmp_path, capsys):
    path, _ = taming_file(tmp_path)
    cfg = write_cfg(tmp_path, taming_cfg(loss={"use_gan": False}))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 0
    err = capsys.readouterr().err
    assert "not used from the file: the discriminator" in err and "use_gan is false" in err
    assert "discriminator optimizer" not in err


def test_a_schedule_that_does_not_map_is_reported_as_starting_fresh(tmp_path, capsys):
    path, _ = taming_file(tmp_path, lr=2e-3, decays=3)  # the file's lr was 2e-3 × 0.99^3
    cfg = write_cfg(tmp_path, taming_cfg())
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 0
    err = capsys.readouterr().err
    assert "starts fresh: learning-rate schedule: the file's ExponentialLR (base 0.002, gamma 0.99, 3 decays" in err


def test_an_optimizer_over_other_parameters_starts_fresh_with_the_reason(tmp_path, capsys):
    path, ckpt = taming_file(tmp_path)
    groups = ckpt["optimizer"]["param_groups"]
    groups[0]["params"] = groups[0]["params"][:-2]  # two parameters short
    torch.save(ckpt, path)
    cfg = write_cfg(tmp_path, taming_cfg())
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 0
    err = capsys.readouterr().err
    assert "starts fresh: autoencoder optimizer ('optimizer'): the file's optimizer holds" in err


def test_model_weights_are_strict(tmp_path, capsys):
    path, ckpt = taming_file(tmp_path)
    del ckpt["state_dict"]["decoder.conv_out.bias"]
    ckpt["state_dict"]["decoder.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    cfg = write_cfg(tmp_path, taming_cfg())
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert "missing from the file (1): decoder.conv_out.bias" in err and "decoder.extra.weight" in err


def test_train_resume_from_in_the_config_and_the_run_dir_guard(tmp_path, capsys):
    path, _ = taming_file(tmp_path)
    d = taming_cfg()
    d["train"]["resume_from"] = str(path)
    cfg = write_cfg(tmp_path, d)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    assert "continuing with step 5" in capsys.readouterr().err
    # run again: the run dir holds a run now; resuming from the old file again would discard it
    assert main(["train", str(cfg), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "train.resume_from" in err and f"--resume {run}" in err
    # resume_from naming the run directory itself continues it
    d["train"]["resume_from"] = str(run)
    d["train"]["num_steps"] = 8
    cfg.write_text(yaml.safe_dump(d))
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    assert "at step 7" in capsys.readouterr().err


# ---- first version, VQ-VAE-2 -------------------------------------------------------------------------------------
def test_vqvae2_pth_tar_with_aliases_and_discriminator_state(tmp_path, capsys):
    from vqforge.config import parse_config

    cfg = parse_config(vqvae2_dict())
    path = tmp_path / "checkpoint_step4.pth.tar"
    ckpt = pf.first_version_vqvae2(path, cfg.model.vqvae2, disc={"in_channels": 3, "ndf": 8, "n_layers": 3})
    assert any(k.startswith("vq_vae.") for k in ckpt["state_dict"])  # the aliases are in the file
    run = build(vqvae2_dict(), tmp_path / "run", path)
    tr = run.trainer
    sd = tr.raw_model.state_dict()
    assert torch.equal(sd["encoders.0.layers.0.0.weight"], ckpt["state_dict"]["encoders.0.layers.0.0.weight"])
    assert torch.equal(sd["codebooks.1.quantizer.embedding.weight"], ckpt["state_dict"]["codebooks.1.embed"].t())
    assert torch.equal(tr.discriminator.state_dict()["main.8.weight"], ckpt["discriminator_state"]["model.8.weight"])
    order = pf.vqvae2_param_order(pf.vqvae2_state_shapes(cfg.model.vqvae2))
    params = dict(tr.raw_model.named_parameters())
    assert {"upscalers.0.stages.0.0.weight", "codebooks.0.conv_in.bias"} <= set(order)
    assert any(k.endswith(".alpha") for k in order)
    for i, name in enumerate(order):  # every parameter's moments, by name
        assert torch.equal(tr.opt_g.state[params[name]]["exp_avg"], ckpt["optimizer"]["state"][i]["exp_avg"]), name
    d_params = dict(tr.discriminator.named_parameters())
    assert torch.equal(tr.opt_d.state[d_params["main.3.weight"]]["exp_avg"], ckpt["optimizer_disc"]["state"][3]["exp_avg"])  # main.0.w, main.0.b, main.2.w, main.3.w
    assert tr.counters.step == 5
    run.logger.close()

    # and it trains on from there through the CLI
    cfg_path = write_cfg(tmp_path, vqvae2_dict())
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run2"), "--resume", str(path)]) == 0
    err = capsys.readouterr().err
    assert "duplicate tensors under the aliases encoder.*, decoder.*, vq_vae.*" in err
    assert "restored: discriminator weights" in err and "(discriminator_state)" in err
    assert "restored: discriminator optimizer ('optimizer_disc')" in err


def test_vqvae2_without_gan_and_an_alias_that_disagrees(tmp_path, capsys):
    from vqforge.config import parse_config

    cfg = parse_config(vqvae2_dict(use_gan=False))
    path = tmp_path / "ckpt.pth.tar"
    ckpt = pf.first_version_vqvae2(path, cfg.model.vqvae2, gan=False)
    cfg_path = write_cfg(tmp_path, vqvae2_dict(use_gan=False))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 0
    assert "restored: autoencoder optimizer" in capsys.readouterr().err
    ckpt["state_dict"]["vq_vae.0.embed"] = ckpt["state_dict"]["vq_vae.0.embed"] + 1
    torch.save(ckpt, path)
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run2"), "--resume", str(path)]) == 2
    assert "'vq_vae.0.embed' should be the same tensor as 'codebooks.0.embed'" in capsys.readouterr().err


# ---- the later versions' .pt ---------------------------------------------------------------------------------------
def test_later_version_pt_with_model_prefix_resumes(tmp_path, capsys):
    path = tmp_path / "checkpoint_step4.pt"
    # an RVQ-VQGAN trainer's run with rvq_levels 1: a plain EMAVQ registered as `_model`
    ckpt = pf.later_version_taming(path, dd=DD, n_embed=32, embed_dim=8, disc=DISC, lr=1e-3, rvq_levels=1)
    assert all(k.startswith("_model.") for k in ckpt["model"])
    d = taming_cfg(train={"lr_schedule": "constant"})
    cfg = write_cfg(tmp_path, d)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--resume", str(path)]) == 0
    err = capsys.readouterr().err
    assert "later version (.pt)" in err and "restored: autoencoder optimizer ('opt_ae')" in err
    assert "restored: discriminator optimizer ('opt_disc')" in err
    assert "restored: learning rate: constant 0.001" in err
    assert "continuing with step 5" in err


def test_later_version_final_save_is_numbered_with_its_step_count(tmp_path, capsys):
    path = tmp_path / "checkpoint_step6.pt"
    pf.later_version_taming(path, dd=DD, n_embed=32, embed_dim=8, disc=DISC, step=6, num_steps=6, prefix="")
    cfg = write_cfg(tmp_path, taming_cfg(train={"lr_schedule": "constant"}))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 0
    assert "'step': 6 is the final save after 6 steps; continuing with step 6" in capsys.readouterr().err


def test_later_version_without_weights_and_rvq_files_are_refused_clearly(tmp_path, capsys):
    cfg = write_cfg(tmp_path, taming_cfg())
    empty = tmp_path / "empty.pt"
    pf.later_version_taming(empty, dd=DD, n_embed=32, embed_dim=8, disc=DISC, empty_model=True)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r1"), "--resume", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "holds no model weights: its 'model' entry is empty" in err and "fix:" in err
    rvq = tmp_path / "rvq.pt"
    pf.later_version_taming(rvq, dd=DD, n_embed=32, embed_dim=8, disc=DISC, rvq_levels=4)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r2"), "--resume", str(rvq)]) == 2
    err = capsys.readouterr().err
    assert "residual-VQ model (4 levels" in err and "does not read this checkpoint layout yet" in err


def test_files_that_are_not_training_checkpoints(tmp_path, capsys):
    cfg = write_cfg(tmp_path, taming_cfg())
    bare = tmp_path / "weights.pth"
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, bare)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--resume", str(bare)]) == 2
    assert "holds only weights: start a new run from them with model.init_from" in capsys.readouterr().err


# ---- safety: a crafted pickle in this layout is refused, and its code does not run --------------------------------
class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pth_tar_is_refused_without_running_its_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path, ckpt = taming_file(tmp_path)
    ckpt["scheduler"] = {"gamma": 0.99, "last_epoch": 0, "base_lrs": [1e-3], "hook": _Payload(str(marker))}
    torch.save(ckpt, path)
    cfg = write_cfg(tmp_path, taming_cfg())
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the file contains code" in err and "system" in err
    assert not marker.exists()
    assert main(["convert", str(path), "--config", str(cfg), "--out", str(tmp_path / "conv")]) == 2
    assert not marker.exists() and not (tmp_path / "conv").exists()


# ---- vqforge convert ---------------------------------------------------------------------------------------------
def test_convert_pth_tar_with_the_users_json_config(tmp_path, capsys):
    path, ckpt = taming_file(tmp_path)
    seed_cfg = {  # the previous system's JSON layout
        "model_type": "TamingVQGAN",
        "model_args": {"model_variant": "EMAVQ", "n_embed": 32, "embed_dim": 8, "ddconfig": DD,
                       "lossconfig": {"target": "models.taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                      "params": {"disc_in_channels": 3, "disc_num_layers": 2, "disc_start": 10,
                                                 "disc_ndf": 8}}},
        "train_args": {"num_steps": 10},
        "data_args": {"batch_size": 1},
    }
    cfg_path = tmp_path / "param.json"
    cfg_path.write_text(json.dumps(seed_cfg))
    out = tmp_path / "exported"
    assert main(["convert", str(path), "--config", str(cfg_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "previous system" in printed and "5 steps" in printed
    model = vqforge.from_pretrained(out)
    assert torch.equal(model.state_dict()["quantize.embedding.embed_avg"], ckpt["state_dict"]["quantize.embedding.embed_avg"])
    from safetensors.torch import load_file

    disc = load_file(str(out / "discriminator.safetensors"))
    assert torch.equal(disc["main.2.weight"], ckpt["state_dict"]["loss.discriminator.main.2.weight"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert model.decode(model.encode(x)).shape == x.shape


def test_convert_vqvae2_pth_tar(tmp_path):
    from vqforge.config import parse_config

    cfg = parse_config(vqvae2_dict())
    path = tmp_path / "ckpt.pth.tar"
    ckpt = pf.first_version_vqvae2(path, cfg.model.vqvae2, disc={"in_channels": 3, "ndf": 8, "n_layers": 3})
    cfg_path = write_cfg(tmp_path, vqvae2_dict())
    out = tmp_path / "exported"
    assert main(["convert", str(path), "--config", str(cfg_path), "--out", str(out)]) == 0
    model = vqforge.from_pretrained(out)
    assert torch.equal(model.state_dict()["decoders.0.layers.0.weight"], ckpt["state_dict"]["decoders.0.layers.0.weight"])
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(out / "discriminator.safetensors"))["main.11.bias"],
                       ckpt["discriminator_state"]["model.11.bias"])


def test_model_init_from_takes_previous_system_files(tmp_path):
    """`model.init_from` (start a new run from the weights only) reads both layouts as well."""
    from vqforge.config import parse_config
    from vqforge.models import registry
    from vqforge.models.pretrained import load_weights

    cfg = parse_config(vqvae2_dict(use_gan=False))
    path = tmp_path / "ckpt.pth.tar"
    ckpt = pf.first_version_vqvae2(path, cfg.model.vqvae2, gan=False)
    model = registry.build(cfg.model)
    load_weights(model, path)
    assert torch.equal(model.state_dict()["upscalers.0.stages.0.0.weight"], ckpt["state_dict"]["upscalers.0.stages.0.0.weight"])
    later = tmp_path / "checkpoint_step4.pt"
    ck = pf.later_version_taming(later, dd=DD, n_embed=32, embed_dim=8, disc=DISC)
    taming = registry.build(tiny_config().model)
    load_weights(taming, later)
    assert torch.equal(taming.state_dict()["encoder.conv_in.weight"], ck["model"]["_model.encoder.conv_in.weight"])


# ---- the resume goes through the trainer's parts -----------------------------------------------------------------
def test_previous_resume_fills_the_trainer_parts_and_reports_a_new_part_by_itself(tmp_path, monkeypatch):
    """Optimizer moments load through the optimizer part (which gives them the parameters' memory layout, as the
    fused kernels need), and a part the previous system's file cannot fill is reported as starting fresh without
    any change to the previous-system code."""
    from vqforge.train.trainer import Trainer

    class Tally:
        optional = True

        def __init__(self):
            self.loaded = "not called"

        def state_dict(self):
            return None

        def load_state_dict(self, state):
            self.loaded = state

    tally = Tally()
    real_parts = Trainer.parts
    monkeypatch.setattr(Trainer, "parts", lambda self: {**real_parts(self), "tally": tally})
    path, _ = taming_file(tmp_path)
    run = build(taming_cfg(train={"channels_last": True}), tmp_path / "run", path)
    run.logger.close()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "starts fresh: tally: the previous system's file records none; it starts as built" in log
    assert tally.loaded is None  # an optional part is told to start fresh
    opt = run.trainer.opt_g
    w = run.trainer.raw_model.decoder.conv_out.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and opt.state[w]
    for k in ("exp_avg", "exp_avg_sq"):
        assert opt.state[w][k].stride() == w.stride(), k

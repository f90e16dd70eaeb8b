"""`vqforge train` and `vqforge export`."""

from __future__ import annotations

from pathlib import Path

from .. import distributed as dist
from ..config.differences import format_differences, previous_system_differences
from ..errors import CheckpointError, ConfigError


def _load(config_path: str, overrides) -> tuple:
    from ..config import load_config_with_warnings

    return load_config_with_warnings(config_path, overrides)  # the run logger reports the warnings once


def default_run_dir(cfg, config_path: str, out: str | None) -> Path:
    if out:
        return Path(out)
    if cfg.train.out_dir:
        return Path(cfg.train.out_dir)
    return Path("runs") / Path(config_path).stem


def fit_and_report(fit, logger, export) -> None:
    """Train (`fit()` returns the final validation metrics), then on the main process run `export()`, which returns
    the lines that say where the results are, and log them; the logger is closed whatever happens."""
    try:
        metrics = fit()
        if dist.is_main():
            for line in export():
                logger.info(line)
            if metrics:
                logger.info("  final validation: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    finally:
        logger.close()


def train_main(args) -> int:
    cfg, warns = _load(args.config, args.overrides)
    with dist.command_scope(cfg.train.dist_timeout_s, cfg.train.device):  # setup/teardown: no-ops without torchrun
        from .build import build_run

        run_dir = default_run_dir(cfg, args.config, args.out)
        # --resume wins over the config's train.resume_from (the previous system's checkpoint_path / resume_ckpt)
        resume = args.resume or cfg.train.resume_from
        continues_itself = bool(resume) and Path(resume).resolve() == run_dir.resolve()
        if not continues_itself and not args.resume and (run_dir / "checkpoints" / "latest").exists():
            started = (f" (the config's train.resume_from {cfg.train.resume_from} was only its starting point)"
                       if cfg.train.resume_from else "")
            raise CheckpointError(
                f"{run_dir} already holds a training run{started}; continue it with --resume {run_dir}, "
                "or train into another directory with --out"
            )
        run = build_run(cfg, run_dir, resume=resume, warnings=warns)
        differences = previous_system_differences(cfg)
        if differences:
            run.logger.info(format_differences(differences))

        def export() -> list[str]:
            from ..models.pretrained import save_pretrained

            export_dir = run_dir / "model"
            save_pretrained(run.trainer.raw_model, cfg, export_dir)
            return [f"run directory: {run_dir}", f"  model (for from_pretrained / vqforge eval): {export_dir}",
                    f"  checkpoints: {run_dir / 'checkpoints'}", f"  reconstruction grids: {run_dir / 'images'}",
                    f"  metrics: {run_dir / 'metrics.jsonl'} (TensorBoard: {run_dir / 'tensorboard'})"]

        fit_and_report(run.trainer.fit, run.logger, export)
    return 0


def export_main(args) -> int:
    from ..models.pretrained import load_any, save_pretrained

    model, cfg = load_any(args.source, ema=args.ema)
    dtype = getattr(args, "dtype", "fp32")
    if getattr(args, "format", "vqforge") == "user":
        if dtype != "fp32":
            raise ConfigError("--dtype", f"{dtype} applies to the vqforge format only", "leave --dtype out")
        from ..models.user_export import save_user_checkpoint

        pt = save_user_checkpoint(model, cfg, Path(args.out))
        print(f"exported to {pt} (the previous system's layout: ckpt['model'], user key names) and "
              f"{Path(args.out) / 'config.json'}")
        return 0
    save_pretrained(model, cfg, Path(args.out), dtype=dtype)
    print(f"exported to {args.out} (config.json + model.safetensors, {dtype} weights)")
    return 0

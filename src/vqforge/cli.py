"""`vqforge` command line: parse arguments, then hand over to the command's module.

User errors (`VQForgeError`) are printed as one message and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VQForgeError

# command -> (module, function); each function takes the parsed argparse namespace and returns an exit code
COMMANDS = {
    "check-config": ("vqforge.config.command", "check_config_main"),
    "train": ("vqforge.train.command", "train_main"),
    "export": ("vqforge.train.command", "export_main"),
    "convert": ("vqforge.models.convert", "convert_main"),
    "eval": ("vqforge.eval.command", "eval_main"),
    "encode": ("vqforge.eval.command", "encode_main"),
    "decode": ("vqforge.eval.command", "decode_main"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqforge", description="Train, evaluate and use vector-quantized tokenizers.")
    sub = p.add_subparsers(dest="command", required=True)

    def add_set(sp):
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a native config key, e.g. --set train.lr=1e-4 (repeatable)")

    sp = sub.add_parser("check-config", help="validate a config and print it fully resolved")
    sp.add_argument("config")
    add_set(sp)

    sp = sub.add_parser("train", help="train a tokenizer from a config")
    sp.add_argument("config")
    sp.add_argument("--out", default=None, help="run directory (default: train.out_dir or runs/<config name>)")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR|CKPT", help="continue a run at its exact step")
    add_set(sp)

    sp = sub.add_parser("export", help="export a run or checkpoint to config.json + model.safetensors")
    sp.add_argument("source", metavar="RUN_DIR|CKPT")
    sp.add_argument("--out", required=True)
    sp.add_argument("--ema", action="store_true", help="export the weight-EMA copy instead of the raw weights")

    sp = sub.add_parser("convert", help="import a taming-transformers checkpoint")
    sp.add_argument("ckpt")
    sp.add_argument("--config", required=True, help="the taming YAML the checkpoint was trained with")
    sp.add_argument("--out", required=True)

    sp = sub.add_parser("eval", help="measure a tokenizer on a data set")
    sp.add_argument("model", metavar="MODEL", help="run directory, checkpoint or exported directory")
    sp.add_argument("--data", required=True, nargs="+", help="images/videos: files, directories or globs")
    sp.add_argument("--json", default=None, help="write metrics here (default: <out>/metrics.json)")
    sp.add_argument("--out", default=None, help="directory for the report images (default: next to --json or ./eval)")
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--resolution", type=int, default=None, help="center-crop size (default: the model's training resolution)")
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--inception", default=None, help="InceptionV3 TorchScript file for rFID")
    sp.add_argument("--vgg", default=None, help="VGG16 ImageNet weights for LPIPS")
    sp.add_argument("--ema", action="store_true", help="evaluate the weight-EMA copy")
    sp.add_argument("--no-baselines", action="store_true", help="skip the bicubic and JPEG reference columns")

    sp = sub.add_parser("encode", help="images or videos -> token indices")
    sp.add_argument("model", metavar="MODEL")
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    sp.add_argument("--out", required=True, help=".safetensors or .npy")
    sp.add_argument("--resolution", type=int, default=None)

    sp = sub.add_parser("decode", help="token indices -> PNG images or an MP4")
    sp.add_argument("model", metavar="MODEL")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--out", required=True, help="a directory for PNGs, or a .mp4 path")
    sp.add_argument("--depth", type=int, default=None, help="residual VQ: decode only the first DEPTH levels")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = COMMANDS[args.command]
    try:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(args) or 0)
    except VQForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

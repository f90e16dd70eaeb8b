"""`vqforge` command line: parse arguments, then hand over to the command's module.

User errors (`VQForgeError`) are printed as one message and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VQForgeError

# command -> "module:function"; each function takes the parsed argparse namespace and returns an exit code
COMMANDS = {
    "check-config": "vqforge.config.command:check_config_main",
    "train": "vqforge.train.command:train_main",
    "export": "vqforge.train.command:export_main",
    "convert": "vqforge.models.convert:convert_main",
    "eval": "vqforge.eval.command:eval_main",
    "encode": "vqforge.tokens.command:encode_main",
    "decode": "vqforge.tokens.command:decode_main",
    "info": "vqforge.models.info:info_main",
    "launch": "vqforge.launch:launch_main",
    "entropy": "vqforge.entropy.command:entropy_main",
    "compress": "vqforge.codec.command:compress_main",
    "decompress": "vqforge.codec.command:decompress_main",
    "rd": "vqforge.codec.command:rd_main",
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
    sp.add_argument("--resume", default=None, metavar="RUN_DIR|CKPT|FILE",
                    help="continue a run at its exact step, or from a checkpoint file of the previous system "
                         "(.pth.tar / .pt; wins over train.resume_from)")
    add_set(sp)

    sp = sub.add_parser("export", help="export a run or checkpoint to config.json + model.safetensors")
    sp.add_argument("source", metavar="RUN_DIR|CKPT")
    sp.add_argument("--out", required=True)
    sp.add_argument("--ema", action="store_true", help="export the weight-EMA copy instead of the raw weights")
    sp.add_argument("--format", choices=("vqforge", "user"), default="vqforge",
                    help="vqforge: config.json + model.safetensors; user: the previous system's model.pt + "
                         "config.json (taming family, incl. its shared-codebook RVQ and PQ)")
    sp.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                    help="vqforge format: store the layer weights in this type (half the file in bf16/fp16); "
                         "codebooks and buffers (norm and EMA codebook statistics) stay fp32; loading computes in fp32")

    sp = sub.add_parser("convert", help="import a taming-transformers or previous-system checkpoint")
    sp.add_argument("ckpt", help="a taming .ckpt, or a .pth.tar / .pt of the previous system")
    sp.add_argument("--config", required=True,
                    help="the config the checkpoint was trained with (taming YAML, the previous system's JSON, or native)")
    sp.add_argument("--out", required=True)

    sp = sub.add_parser("eval", help="measure a tokenizer on a data set")
    sp.add_argument("model", metavar="MODEL", help="run directory, checkpoint or exported directory")
    sp.add_argument("--data", required=True, nargs="+", help="images/videos: files, directories or globs")
    sp.add_argument("--json", default=None, help="write metrics here (default: <out>/metrics.json)")
    sp.add_argument("--out", default=None, help="directory for the report images (default: next to --json or ./eval)")
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--resolution", type=int, default=None, help="center-crop size (default: the model's training resolution)")
    sp.add_argument("--inception", default=None, help="InceptionV3 TorchScript file for rFID")
    sp.add_argument("--vgg", default=None, help="VGG16 ImageNet weights for LPIPS")
    sp.add_argument("--no-baselines", action="store_true", help="skip the bicubic and JPEG reference columns")
    sp.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="run the networks in fp32 (default) or under bf16 autocast; auto: bf16 on CUDA GPUs that "
                         "support it")
    add_model_options(sp, "images per batch")

    sp = sub.add_parser("encode", help="images or videos -> token indices")
    sp.add_argument("model", metavar="MODEL")
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    sp.add_argument("--out", required=True, help=".safetensors or .npy")
    sp.add_argument("--resolution", type=int, default=None)
    add_model_options(sp, "frames per model call")

    sp = sub.add_parser("decode", help="token indices -> PNG images or an MP4")
    sp.add_argument("model", metavar="MODEL")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--out", required=True, help="a directory for PNGs, or a .mp4 path")
    sp.add_argument("--depth", type=int, default=None, help="residual VQ: decode only the first DEPTH levels")
    sp.add_argument("--fps", type=float, default=None,
                    help="frame rate of the MP4s written (default: the source video's, else 25)")
    add_model_options(sp, "frames per model call")

    sp = sub.add_parser("info", help="what a tokenizer is: config summary, parameters, K, f, tokens and bits")
    sp.add_argument("model", metavar="MODEL", help="exported directory, checkpoint or run directory")
    sp.add_argument("--resolution", type=int, default=None,
                    help="image size for tokens per image and bits (default: the model's training resolution)")
    sp.add_argument("--ema", action="store_true", help="describe the weight-EMA copy (same architecture)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sp = sub.add_parser("launch", help="run the training tasks of a multitask map file, each on its GPU")
    sp.add_argument("map", metavar="MAP.json", help='{"<task config>": <gpu index>, ...}; paths relative to it; -1 skips')
    sp.add_argument("--out", default=None, help="directory for the per-task logs (default: <map folder>/launch-<time>)")
    sp.add_argument("--cpu", action="store_true", help="run the tasks on the CPU, one after another")
    sp.add_argument("--refresh", type=float, default=2.0, help="seconds between status-table updates")
    add_set(sp)

    from .entropy.command import add_parser as add_entropy_parser

    add_entropy_parser(sub)

    add_codec_commands(sub)
    return p


def add_model_options(sp, batch_help: str) -> None:
    """--batch-size, --ema and --device: how a command that runs a tokenizer loads and calls it."""
    sp.add_argument("--batch-size", type=int, default=8, help=f"{batch_help} (default 8)")
    sp.add_argument("--ema", action="store_true", help="use the weight-EMA copy of a training checkpoint")
    sp.add_argument("--device", default="auto", help="auto (this process's GPU, else the CPU), cpu, cuda or cuda:N")


def add_codec_commands(sub) -> None:
    """`compress`, `decompress` and `rd` (vqforge.codec)."""
    sp = sub.add_parser("compress", help="images or videos -> a .vqf file (tokenizer + entropy model + range coder)")
    sp.add_argument("tokenizer", metavar="TOKENIZER", help="exported model, checkpoint or run directory")
    sp.add_argument("entropy_model", metavar="ENTROPY_MODEL", help="directory written by `vqforge entropy train`")
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    sp.add_argument("--out", required=True, metavar="FILE")
    sp.add_argument("--resolution", type=int, default=None, help="center-crop size (default: the model's training one)")
    sp.add_argument("--depth", type=int, default=None, help="residual VQ: code only the first DEPTH levels")
    sp.add_argument("--intra-period", type=int, default=32, help="frames per independently decodable segment")
    sp.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True,
                    help="mix the entropy model with the segment's own token statistics (recorded in the file; "
                    "--no-adaptive codes with the model alone)")

    sp = sub.add_parser("decompress", help="a .vqf file -> an MP4 or a directory of PNGs")
    sp.add_argument("tokenizer", metavar="TOKENIZER")
    sp.add_argument("entropy_model", metavar="ENTROPY_MODEL")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--out", required=True, metavar="VIDEO|DIR", help="a .mp4 path or a directory")
    sp.add_argument("--depth", type=int, default=None, help="residual VQ: decode with the first DEPTH levels only")

    sp = sub.add_parser("rd", help="rate-distortion comparison: vqforge vs x264/x265 (and JPEG) on test clips")
    sp.add_argument("tokenizer", metavar="TOKENIZER")
    sp.add_argument("entropy_model", metavar="ENTROPY_MODEL")
    sp.add_argument("--data", nargs="*", default=[], help="extra folders/files of videos or images (each folder of "
                    "images is one clip)")
    sp.add_argument("--no-test-clips", action="store_true", help="only the --data clips")
    sp.add_argument("--clips", nargs="*", default=None, help="names of built-in test clips (default: all)")
    sp.add_argument("--frames", type=int, default=32, help="frames per clip")
    sp.add_argument("--size", type=int, default=256, help="clip width and height")
    sp.add_argument("--crf", type=float, nargs="*", default=[23, 29, 35, 41, 47, 51],
                    help="CRF sweep (x264/x265, preset medium)")
    sp.add_argument("--codecs", nargs="*", default=["libx264", "libx265"])
    sp.add_argument("--pix-fmts", nargs="*", default=["yuv420p", "yuv444p"])
    sp.add_argument("--intra-period", type=int, default=32)
    sp.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True,
                    help="vqforge files with adaptive mixing (as `compress`); --no-adaptive: the model alone")
    sp.add_argument("--kid", action=argparse.BooleanOptionalAction, default=True, help="KID on InceptionV3 features")
    sp.add_argument("--vgg", default=None, help="VGG16 ImageNet weights for LPIPS")
    sp.add_argument("--out", required=True, help="directory for rd.json, rd.md and rd.png")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = COMMANDS[args.command].split(":")
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

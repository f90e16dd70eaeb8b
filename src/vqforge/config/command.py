"""`vqforge check-config CONFIG [--set KEY=VALUE ...]`: validate a config and print it fully resolved.

Exit 0: the resolved config as native YAML on stdout, warnings on stderr. An invalid config raises ConfigError,
which the CLI prints and turns into exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from .readers import dump_yaml, load_config_with_warnings


def check_config_main(args: argparse.Namespace) -> int:
    """Entry point for `vqforge check-config` (args.config, args.overrides)."""
    cfg, lines = load_config_with_warnings(args.config, list(getattr(args, "overrides", None) or ()))
    print(f"# {args.config}: valid ({cfg._format} format), resolved as a native vqforge config")
    sys.stdout.write(dump_yaml(cfg))
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
    if not lines:
        print("no warnings", file=sys.stderr)
    return 0


__all__ = ["check_config_main"]

"""Network dissection from the command line.

With no arguments it dissects the embedded toy classifier's last conv layer on 1,000 scenes of
the embedded world against their exact segmentation. `--model vgg16_places` dissects the
Places365 VGG16 (converted from the published checkpoint) on Places365 val with the unified-
parsing segmenter, as the paper did; `--model proggan_church` dissects a Progressive GAN.

    python scripts/dissect.py
    python scripts/dissect.py --model vgg16_places --layer conv5_3 --seg netpqc
    python scripts/dissect.py --model toy_classifier --layers features.conv3_1 features.conv4_2
    python scripts/dissect.py --label-rule iou-best --formula-length 3 --label-source clip

Results go to OUTDIR/<model>-<dataset>-<seg>-<layer>[-<1000 x quantile>][-t<thumbsize>]/ (the
original's names: the default quantile 0.01 adds "-10"): report.html, report.json,
concepts.svg, image/unit<N>.jpg, stats/ and the caches.

Exit codes: 0 done, 2 bad flags or input (one-line message; --debug shows the traceback),
3 another run is writing the same results folder.
"""
from __future__ import annotations

import argparse
import sys

from jaxdissect import cli, parallel
from jaxdissect.compilation_cache import enable_compilation_cache
from jaxdissect.config_flags import add_config_flags, config_from_args
from jaxdissect.dissect import DissectConfig, dissect
from jaxdissect.dissect.requirements import MissingFilesError, missing_files_message, needed_files
from jaxdissect.dissect.run import default_dataset
from weight_conversion.errors import DownloadError

PROG = "dissect.py"


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    p = cli.ArgumentParser(prog=PROG, description=doc[0], epilog="\n\n".join(doc[1:]))
    add_config_flags(p, DissectConfig)
    parallel.add_distributed_flags(p)
    args = p.parse_args(argv)
    cli.check_distributed(p, args)
    return args


def config_from(args: argparse.Namespace) -> DissectConfig:
    return config_from_args(DissectConfig, args)


def run(args: argparse.Namespace) -> int:
    config = config_from(args).validate()  # before anything is loaded or written
    parallel.initialize_from_flags(args)
    try:
        dissect(config)
    except DownloadError as e:
        needed = needed_files(config, config.dataset or default_dataset(config.model_name))
        if not needed:
            raise
        raise MissingFilesError(missing_files_message(needed, str(e).split(". ")[0])) from e
    return 0


def main(argv=None) -> int:
    return cli.run_script(PROG, parse_args, run, argv)


if __name__ == "__main__":
    enable_compilation_cache()
    sys.exit(main())

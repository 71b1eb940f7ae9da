"""Network dissection from the command line.

With no arguments it dissects the embedded toy classifier's last conv layer on 1,000 scenes of
the embedded world against their exact segmentation. `--model vgg16_places` dissects the
Places365 VGG16 (converted from the published checkpoint) on Places365 val with the unified-
parsing segmenter, as the paper did; `--model proggan_church` dissects a Progressive GAN.

    python scripts/dissect.py
    python scripts/dissect.py --model vgg16_places --layer conv5_3 --seg netpqc
    python scripts/dissect.py --model toy_classifier --layers features.conv3_1 features.conv4_2

Exit codes: 0 done, 2 bad flags or input (one-line message; --debug shows the traceback),
3 another run is writing the same results folder.
"""
from __future__ import annotations

import sys

from jaxdissect import parallel
from jaxdissect.cli import add_config_flags, config_from_args, make_parser, run_main
from jaxdissect.compilation_cache import enable_compilation_cache
from jaxdissect.dissect import DissectConfig, dissect
from jaxdissect.dissect.requirements import MissingFilesError, missing_files_message, needed_files
from jaxdissect.dissect.run import default_dataset
from jaxdissect.dissect.runstate import RunLockedError
from weight_conversion.errors import DownloadError


def parse_args(argv=None):
    doc = __doc__.split("\n\n")
    p = make_parser("dissect.py", doc[0], "\n\n".join(doc[1:]))
    add_config_flags(p, DissectConfig)
    parallel.add_distributed_flags(p)
    return p.parse_args(argv)


def config_from(args) -> DissectConfig:
    return config_from_args(DissectConfig, args)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> int:
        config = config_from(args).validate()  # before anything is loaded or written
        parallel.initialize_from_flags(args)
        try:
            dissect(config)
        except RunLockedError as e:
            print(f"dissect.py: {e}", file=sys.stderr)
            return 3
        except DownloadError as e:
            needed = needed_files(config, config.dataset or default_dataset(config.model_name))
            if not needed:
                raise
            raise MissingFilesError(missing_files_message(needed, str(e).split(". ")[0])) from e
        return 0

    return run_main("dissect.py", body, args.debug, expected=(FloatingPointError,))


if __name__ == "__main__":
    enable_compilation_cache()
    sys.exit(main())

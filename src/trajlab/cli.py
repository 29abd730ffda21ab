"""The ``trajlab`` command line: the only place that reads argv and the environment.

Every subcommand has ``--help``; the subcommands live in :mod:`trajlab.commands` (one module each).
Exit status: 0 success, 1 a runtime failure or damage found, 2 a usage error (one line
``trajlab: error: ...`` on stderr, nothing written), 3 out of disk space, 130 interrupted. Every error is
one line on stderr; ``--log-level DEBUG`` adds the traceback.

Environment variables (read here only, and passed down as :class:`~trajlab.config.HostSettings`):

* ``TRAJLAB_NUM_THREADS``: torch threads for the process (default: a run's ``train.num_threads``, else
  torch's default);
* ``TRAJLAB_DATA``: a directory searched for datasets when ``data.data_dir`` is not set;
* ``TRAJLAB_CPU_KERNEL=0``: do not build or use the fused CPU averaging kernel (the torch path gives the
  same numbers);
* ``TRAJLAB_CACHE`` (else ``XDG_CACHE_HOME``, else ``~/.cache``): where that kernel is compiled to;
* ``CC``: the C compiler for it (default ``cc``, ``gcc`` or ``clang``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from trajlab.commands import registry
from trajlab.commands.io import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, emit
from trajlab.config import HostSettings

log = logging.getLogger("trajlab")

ENVIRONMENT_HELP = """environment variables:
  TRAJLAB_NUM_THREADS   torch threads (default: the run's train.num_threads, else torch's default)
  TRAJLAB_DATA          a directory searched for datasets when data.data_dir is not set
  TRAJLAB_CPU_KERNEL=0  do not build or use the fused CPU averaging kernel (same numbers, slower)
  TRAJLAB_CACHE         where that kernel is compiled to (else $XDG_CACHE_HOME, else ~/.cache)
  CC                    the C compiler for it (default: cc, gcc or clang on PATH)

exit status: 0 success, 1 runtime failure or damage found, 2 usage error (nothing written),
  3 out of disk space, 130 interrupted"""


def set_torch_threads(n: int) -> None:
    """Set torch's intra-op thread count (module level so spawned workers can receive it)."""
    import torch

    torch.set_num_threads(int(n))


def host_from_environment(environ: Mapping[str, str]) -> HostSettings:
    """The :class:`HostSettings` the environment asks for (see the module docstring)."""
    threads = environ.get("TRAJLAB_NUM_THREADS", "").strip()
    try:
        num_threads = int(threads) if threads else 0
    except ValueError:
        raise UsageError(f"TRAJLAB_NUM_THREADS must be a whole number, got {threads!r}") from None
    if num_threads < 0:
        raise UsageError(f"TRAJLAB_NUM_THREADS must be >= 0, got {num_threads}")
    data = environ.get("TRAJLAB_DATA", "").strip()
    kernel = environ.get("TRAJLAB_CPU_KERNEL", "1").strip().lower() not in ("0", "false", "no", "off")
    return HostSettings(
        data_dirs=(data,) if data else (),
        num_threads=num_threads,
        set_threads=set_torch_threads,
        cpu_kernel=kernel,
        kernel_cache_root=environ.get("TRAJLAB_CACHE") or environ.get("XDG_CACHE_HOME") or None,
        compiler=environ.get("CC") or None,
        distributed_env={k: environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in environ},
    )


class _VersionAction(argparse.Action):
    """``--version``: the version, the code's git revision and source digest (as result files record them),
    computed only when asked (it imports torch)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import torch

        from trajlab.provenance import git_revision, source_digest
        from trajlab.version import __version__

        git = git_revision()
        rev = "no git checkout"
        if git["revision"]:
            rev = f"git {git['revision']}{' (dirty)' if git['dirty'] else ''}"
        digest = source_digest()
        emit(f"trajlab {__version__} ({rev}; source sha256 {digest}; torch {torch.__version__})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: global options, then every subcommand of :mod:`trajlab.commands.registry`."""
    parser = argparse.ArgumentParser(
        prog="trajlab",
        description="Training trajectories, fixed mini-batch losses, iterate averaging and the noisy "
        "quadratic model (arXiv 2301.02312).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version, git revision and source digest; exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in registry.REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv
    try:
        args.host = host_from_environment(os.environ if environ is None else environ)
    except UsageError as e:
        sys.stderr.write(f"trajlab: error: {e}\n")
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="[trajlab] %(message)s", stream=sys.stderr
    )
    if args.host.num_threads:
        set_torch_threads(args.host.num_threads)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("trajlab: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # every error is one line; --log-level DEBUG shows the traceback for bug reports
        code, line = registry.classify(e)
        if args.log_level == "DEBUG":  # for bug reports
            sys.stderr.write(traceback.format_exc())
        sys.stderr.write(f"trajlab: {line}\n")
        return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""The command-line subcommands, one module each; ``trajlab.cli`` is the only module that imports them."""

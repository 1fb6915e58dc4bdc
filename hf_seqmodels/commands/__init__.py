"""The subcommands of ``hf-seqmodels``, one module each (``add_parser(subparsers)``)."""

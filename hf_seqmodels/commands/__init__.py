"""The ``hf-seqmodels`` command line (as transformers keeps its own in ``transformers/commands/``).

``main.py`` builds the parser, ``args.py`` holds the argument types and the checks a command runs before it loads
anything, and each other module is one command exposing ``add_parser(subparsers)``. The work itself lives in the
domain modules (``linearize/``, ``evaluation/``, ``models/hnet/``, ``conversion/``); a command parses, checks, calls
and prints.
"""

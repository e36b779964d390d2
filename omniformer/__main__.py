"""``python -m omniformer`` (and ``torchrun -m omniformer``): the command line."""
import sys

from .cli import main

sys.exit(main())

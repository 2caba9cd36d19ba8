"""``python -m laudnet`` (also what ``torchrun -m laudnet train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())

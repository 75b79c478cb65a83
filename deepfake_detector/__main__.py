"""``python -m deepfake_detector`` (also what ``torchrun -m deepfake_detector`` runs)."""

import sys

from .cli import main

sys.exit(main())

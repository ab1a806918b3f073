"""`python -m recon4d` is the `recon4d` command."""
import sys

from recon4d.cli import main

sys.exit(main())

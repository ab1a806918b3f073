"""`recon4d fit-batch`: many fits, one Ray task each (recon4d.cluster), a manifest of their outcomes."""

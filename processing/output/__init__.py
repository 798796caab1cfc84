"""Dataset-level passes over a written dataset folder: relation rebalancing and the blind baseline."""

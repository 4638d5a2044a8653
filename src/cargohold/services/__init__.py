"""Use cases. Each owns its transaction and raises only domain errors."""

"""Dataset adapters, harmonization, channel geometry, the Zarr corpus and the synthetic generator."""

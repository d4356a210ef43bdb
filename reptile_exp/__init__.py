"""reptile_exp: Reptile (Nichol, Achiam & Schulman 2018) and its baselines, one command per experiment."""

__version__ = "0.1.0"

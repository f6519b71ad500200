"""Weather models (SFNO, FourCastNet-v2, Aurora) and physical variables."""

"""PaDiM (Defard et al. 2020) as a method plugin."""

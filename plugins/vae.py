"""The VAE baseline of the PaDiM paper as a method plugin."""

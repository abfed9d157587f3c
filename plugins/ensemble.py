"""The layer-ensemble ablation of Table I as a method plugin."""

"""Pixel AUROC, PRO, image AUROC and resource metrics as metric plugins."""

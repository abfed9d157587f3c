"""ShanghaiTech Campus as a dataset plugin."""

"""Built-in anombench plugins; each module registers through the entry-point group ``anombench``."""

"""The built-in suites, shipped as package data of ``anombench_suites``: see ``anombench.catalog``."""

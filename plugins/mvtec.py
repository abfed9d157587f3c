"""MVTec AD and Rd-MVTec AD as dataset plugins."""

"""Pure formulas: numbers in, integer bytes (or FLOPs) out. One module per component."""

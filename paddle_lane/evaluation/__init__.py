"""Error analysis: `report` (one self-contained HTML file) and `compare` (paired bootstrap)."""

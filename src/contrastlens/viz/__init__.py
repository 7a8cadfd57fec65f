"""Heatmaps of relevance: terminal, HTML, LaTeX, PNG. Red supports the target, blue the contrast."""

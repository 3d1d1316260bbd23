"""Whole programs: the article, the README, the notebooks, the demo command, the C example."""

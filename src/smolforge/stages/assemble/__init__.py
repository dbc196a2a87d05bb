"""Assembling the dataset: mixtures, real data beside synthetic, accumulation over generations, annealing and splits."""

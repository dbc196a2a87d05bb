"""Quality filters: expressions, top-k cuts, and the heuristic rules of Gopher, C4 and FineWeb, length and language."""

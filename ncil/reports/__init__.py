"""From evaluations to results: metrics, the results and paper tables, figures, costs, and their recomputation."""
